// S3Client, S3Reader, make_s3_store and ShelbyReader against the standalone
// Python servers: s3rver behind a botocore SigV4-verifying proxy
// (tools/testlib/s3.py) and the Shelby RPC stand-in (tools/testlib/shelby_rpc.py).
// Exits 77 (SKIP) when s3rver or botocore are missing, unless CI=true.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "servers.h"
#include "shelbyfs/http_client.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/s3.h"
#include "shelbyfs/shelby.h"

using namespace std::chrono_literals;
using shelbyfs::Errc;
using shelbyfs::HttpClient;
using shelbyfs::HttpOptions;
using shelbyfs::HttpRequest;
using shelbyfs::Result;
using shelbyfs::S3Client;
using shelbyfs::S3Settings;
using shelbyfs::S3Url;
using shelbyfs::ShelbyReader;
using shelbyfs::ShelbySettings;
using shelbyfs::test::PyServer;
using shelbyfs::test::ScratchDir;

namespace {

// Deterministic, position-dependent bytes, so a shifted slice never matches.
std::string pattern(std::size_t size, unsigned seed = 7) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + i / 251 + seed) & 0xff);
    return s;
}

HttpOptions fast_options(int max_retries = 3) {
    HttpOptions o;
    o.connect_timeout = 5000ms;
    o.stall_timeout = 10000ms;
    o.max_retries = max_retries;
    o.backoff_initial = 10ms;
    o.backoff_max = 100ms;
    return o;
}

template <typename T>
Result<T> wait(std::future<Result<T>> f, std::chrono::milliseconds limit = 30000ms) {
    if (f.wait_for(limit) != std::future_status::ready) FAIL("request did not complete within " << limit.count() << " ms");
    return f.get();
}

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

std::string write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    f.close();
    REQUIRE(f.good());
    return path;
}

// One S3 server (bucket "bucket") for the whole run, started on first use.
class S3Env {
public:
    explicit S3Env(std::vector<std::string> args = {"--bucket", "bucket", "--bucket", "0xabc123"}) {
        shelbyfs::test::require_s3_prereqs();
        server_ = std::make_unique<PyServer>("testlib.s3", std::move(args), 60s);
    }
    static S3Env& shared() {
        static S3Env env;
        return env;
    }

    S3Settings settings() const {
        S3Settings s;
        s.endpoint = server_->str("endpoint");
        s.region = server_->str("region");
        s.access_key_id = server_->str("access_key");
        s.secret_access_key = server_->str("secret_key");
        s.session_token = server_->str("session_token");
        return s;
    }
    S3Settings wrong_secret() const {
        S3Settings s = settings();
        s.secret_access_key += "x";
        return s;
    }
    std::string endpoint() const { return server_->str("endpoint"); }

    // Control endpoints (unsigned).
    void control(const std::string& path, const std::string& body = "") {
        HttpRequest req;
        req.method = "POST";
        req.url = endpoint() + path;
        req.body = std::make_shared<const std::string>(body);
        req.options.headers.push_back("Content-Type: application/json");
        auto r = wait(http_.send(std::move(req)));
        REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    }
    void clear_log() { control("/__test/clear"); }
    void clear_injections() { control("/__test/clear_injections"); }
    void inject(const nlohmann::json& spec) { control("/__test/inject", spec.dump()); }
    nlohmann::json log() {
        auto r = wait(http_.get(endpoint() + "/__test/log"));
        REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
        return nlohmann::json::parse(*r);
    }

private:
    std::unique_ptr<PyServer> server_;
    HttpClient http_{fast_options(0)};
};

// An S3 client with its own HttpClient.
struct Client {
    explicit Client(S3Settings s, int retries = 3) : http(fast_options(retries)), s3(http, std::move(s)) {}
    HttpClient http;
    S3Client s3;
};

const std::string kBucket = "bucket";

std::size_t count_if(const nlohmann::json& log, const std::function<bool(const nlohmann::json&)>& pred) {
    return static_cast<std::size_t>(std::count_if(log.begin(), log.end(), pred));
}
std::string q(const nlohmann::json& e) { return e["query"].is_string() ? e["query"].get<std::string>() : ""; }

// Checks `r` is an S3 rejection carrying `code` in its message.
template <typename T>
void check_rejected(const Result<T>& r, const std::string& code) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::HttpStatus);
    CHECK_MESSAGE(contains(r.error().message, code), r.error().message);
    CHECK_MESSAGE(!contains(r.error().message, "shelbyfs-test-secret"), r.error().message);
}

// Keys S3 clients get wrong: every reserved character, '%', non-ASCII, nesting.
const std::vector<std::string> kAwkwardKeys = {
    "plain.bin",
    "with space.bin",
    "plus+sign",
    "eq=uals",
    "per%cent%20",
    "amp&ersand",
    "quest?ion",
    "hash#tag",
    "tilde~x",
    "caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac/\xf0\x9f\x98\x80.bin",
    "nested/dir with space/a+b=c%d&e?f#g~h",
    "xml<&>\"'chars",
    "semi;colon,comma:colon@at!bang$dollar'quote(paren)*star",
};

}  // namespace

TEST_SUITE("s3") {
    TEST_CASE("GET with Range: right credentials accepted, wrong secret rejected") {
        auto& env = S3Env::shared();
        Client good(env.settings());
        const std::string key = "auth/range.bin";
        const std::string data = pattern(10000);
        REQUIRE(good.s3.put_bytes(kBucket, key, data).ok());

        auto r = wait(good.s3.read_range(kBucket, key, 100, 2000));
        REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
        CHECK(*r == data.substr(100, 2000));

        Client bad(env.wrong_secret());
        env.clear_log();
        auto b = wait(bad.s3.read_range(kBucket, key, 100, 2000));
        check_rejected(b, "SignatureDoesNotMatch");
        const auto log = env.log();
        REQUIRE(log.size() == 1);  // 403 is not retried
        CHECK(log[0]["method"] == "GET");
        CHECK(log[0]["range"] == "bytes=100-2099");
        CHECK(log[0]["status"] == 403);
        CHECK(log[0]["accepted"] == false);
    }

    TEST_CASE("HEAD: size, ETag and x-amz-meta-*; wrong secret rejected") {
        auto& env = S3Env::shared();
        Client good(env.settings());
        const std::string key = "auth/head.bin";
        REQUIRE(good.s3.put_bytes(kBucket, key, pattern(1234), {"x-amz-meta-color: Blue sky", "X-Amz-Meta-Expiration-Seconds: 60"}).ok());
        auto h = good.s3.head(kBucket, key);
        REQUIRE_MESSAGE(h.ok(), (h.ok() ? "" : h.error().message));
        CHECK(h->size == 1234);
        CHECK(!h->etag.empty());
        REQUIRE(h->meta("color") != nullptr);
        CHECK(*h->meta("color") == "Blue sky");
        REQUIRE(h->meta("expiration-seconds") != nullptr);
        CHECK(*h->meta("expiration-seconds") == "60");
        CHECK(h->meta("missing") == nullptr);

        auto missing = good.s3.head(kBucket, "auth/no-such-object");
        REQUIRE_FALSE(missing.ok());
        CHECK(missing.error().code == Errc::NotFound);

        Client bad(env.wrong_secret());
        env.clear_log();
        auto b = bad.s3.head(kBucket, key);
        REQUIRE_FALSE(b.ok());
        CHECK(b.error().code == Errc::HttpStatus);
        // A HEAD answer has no body, so S3's error code is not in the message; the status is.
        CHECK_MESSAGE(contains(b.error().message, "403"), b.error().message);
        CHECK_MESSAGE(contains(b.error().message, "s3://bucket/auth/head.bin"), b.error().message);
        const auto log = env.log();
        REQUIRE(log.size() == 1);
        CHECK(log[0]["method"] == "HEAD");
        CHECK(log[0]["status"] == 403);
        CHECK(contains(log[0]["reason"].get<std::string>(), "SignatureDoesNotMatch"));
    }

    TEST_CASE("PUT (put_bytes, put_file): right credentials stored, wrong secret rejected and nothing stored") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        Client good(env.settings());
        Client bad(env.wrong_secret());
        const std::string data = pattern(70000, 3);
        const std::string file = write_file(tmp.file("upload.bin"), data);

        SUBCASE("put_bytes") {
            check_rejected(bad.s3.put_bytes(kBucket, "auth/put-bytes.bin", data), "SignatureDoesNotMatch");
            auto h = good.s3.head(kBucket, "auth/put-bytes.bin");
            REQUIRE_FALSE(h.ok());
            CHECK(h.error().code == Errc::NotFound);
            REQUIRE(good.s3.put_bytes(kBucket, "auth/put-bytes.bin", data).ok());
            auto g = good.s3.get(kBucket, "auth/put-bytes.bin");
            REQUIRE(g.ok());
            CHECK(*g == data);
        }
        SUBCASE("put_file") {
            check_rejected(bad.s3.put_file(kBucket, "auth/put-file.bin", file), "SignatureDoesNotMatch");
            auto h = good.s3.head(kBucket, "auth/put-file.bin");
            REQUIRE_FALSE(h.ok());
            CHECK(h.error().code == Errc::NotFound);
            std::uint64_t progress = 0;
            REQUIRE(good.s3.put_file(kBucket, "auth/put-file.bin", file, {}, [&](std::uint64_t n) { progress = n; }).ok());
            CHECK(progress == data.size());
            auto g = good.s3.get(kBucket, "auth/put-file.bin");
            REQUIRE(g.ok());
            CHECK(*g == data);
        }
        SUBCASE("put_file of an empty file") {
            const std::string empty = write_file(tmp.file("empty"), "");
            REQUIRE(good.s3.put_file(kBucket, "auth/empty", empty).ok());
            auto h = good.s3.head(kBucket, "auth/empty");
            REQUIRE(h.ok());
            CHECK(h->size == 0);
        }
        SUBCASE("put_file of a missing file fails with Io") {
            auto r = good.s3.put_file(kBucket, "auth/never", tmp.file("nope"));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::Io);
        }
    }

    TEST_CASE("multipart upload: 17 MiB in 4 parts of 5 MiB; wrong secret rejected") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        const std::string data = pattern((17u << 20) + 12345, 11);
        const std::string file = write_file(tmp.file("big.bin"), data);
        S3Settings settings = env.settings();
        settings.multipart_threshold = 5u << 20;
        settings.part_size = 5u << 20;
        settings.parts_in_flight = 3;
        S3Settings wrong = env.wrong_secret();
        wrong.multipart_threshold = settings.multipart_threshold;
        wrong.part_size = settings.part_size;
        const std::string key = "mp/big file+1.bin";

        Client bad(wrong);
        env.clear_log();
        check_rejected(bad.s3.put_file(kBucket, key, file), "SignatureDoesNotMatch");
        {
            const auto log = env.log();
            REQUIRE(log.size() >= 1);
            CHECK(log[0]["method"] == "POST");
            CHECK(q(log[0]) == "uploads=");
            CHECK(count_if(log, [](const auto& e) { return e["accepted"] == true; }) == 0);
        }
        CHECK(bad.s3.stats().multipart_uploads == 0);
        Client good(settings);
        auto h = good.s3.head(kBucket, key);
        REQUIRE_FALSE(h.ok());
        CHECK(h.error().code == Errc::NotFound);

        env.clear_log();
        std::vector<std::uint64_t> progress;
        auto r = good.s3.put_file(kBucket, key, file, {"x-amz-meta-kind: checkpoint"},
                                  [&](std::uint64_t n) { progress.push_back(n); });
        REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
        CHECK(good.s3.stats().multipart_uploads == 1);
        CHECK(good.s3.stats().parts == 4);
        REQUIRE(progress.size() == 4);
        CHECK(progress.back() == data.size());
        CHECK(std::is_sorted(progress.begin(), progress.end()));

        const auto log = env.log();
        REQUIRE(log.size() == 6);
        for (const auto& e : log) {
            CHECK(e["accepted"] == true);
            CHECK(e["path"] == "/bucket/mp/big%20file%2B1.bin");
        }
        CHECK(log[0]["method"] == "POST");
        CHECK(q(log[0]) == "uploads=");
        CHECK(log[0]["status"] == 200);
        std::vector<std::string> parts;
        for (std::size_t i = 1; i < 5; ++i) {
            CHECK(log[i]["method"] == "PUT");
            CHECK(log[i]["status"] == 200);
            CHECK(contains(q(log[i]), "uploadId="));
            const std::string qs = q(log[i]);
            const auto p = qs.find("partNumber=");
            REQUIRE(p != std::string::npos);
            parts.push_back(qs.substr(p + 11, qs.find('&', p) - p - 11));
        }
        std::sort(parts.begin(), parts.end());
        CHECK(parts == std::vector<std::string>{"1", "2", "3", "4"});
        CHECK(log[5]["method"] == "POST");
        CHECK(contains(q(log[5]), "uploadId="));
        CHECK(!contains(q(log[5]), "partNumber"));
        CHECK(log[5]["status"] == 200);

        auto back = good.s3.get(kBucket, key);
        REQUIRE(back.ok());
        CHECK(back->size() == data.size());
        CHECK(*back == data);
        auto hh = good.s3.head(kBucket, key);
        REQUIRE(hh.ok());
        CHECK(hh->size == data.size());
        REQUIRE(hh->meta("kind") != nullptr);
        CHECK(*hh->meta("kind") == "checkpoint");
        // A range across a part boundary.
        auto across = wait(good.s3.read_range(kBucket, key, (5u << 20) - 100, 300));
        REQUIRE(across.ok());
        CHECK(*across == data.substr((5u << 20) - 100, 300));
    }

    TEST_CASE("multipart upload: a part failing for good aborts the upload, nothing stored") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        S3Settings settings = env.settings();
        settings.multipart_threshold = 5u << 20;
        settings.part_size = 5u << 20;
        settings.parts_in_flight = 2;
        Client good(settings);
        const std::string file = write_file(tmp.file("doomed.bin"), pattern((16u << 20) + 1, 4));
        const std::string key = "mp/doomed & gone.bin";
        env.clear_log();
        env.inject({{"method", "PUT"}, {"query_contains", "partNumber=3"}, {"status", 400}, {"count", 1},
                    {"code", "InvalidPart"}});
        auto r = good.s3.put_file(kBucket, key, file);
        env.clear_injections();
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK_MESSAGE(contains(r.error().message, "InvalidPart"), r.error().message);
        CHECK_MESSAGE(contains(r.error().message, "part 3 of 4"), r.error().message);
        CHECK_MESSAGE(contains(r.error().message, "s3://bucket/mp/doomed & gone.bin"), r.error().message);
        CHECK(good.s3.stats().multipart_uploads == 0);
        const auto log = env.log();
        // No complete; an abort (DELETE ?uploadId=, which s3rver answers 405) was tried.
        CHECK(count_if(log, [](const auto& e) { return e["method"] == "POST" && contains(q(e), "uploadId="); }) == 0);
        CHECK(count_if(log, [](const auto& e) { return e["method"] == "DELETE" && contains(q(e), "uploadId="); }) == 1);
        CHECK(count_if(log, [](const auto& e) { return e["method"] == "PUT" && contains(q(e), "partNumber=3"); }) == 1);
        auto h = good.s3.head(kBucket, key);
        REQUIRE_FALSE(h.ok());
        CHECK(h.error().code == Errc::NotFound);
    }

    TEST_CASE("list follows continuation tokens across pages") {
        // s3rver answers 500 to any truncated listing, so the proxy pages it (7 per page).
        S3Env env({"--bucket", "bucket", "--list-page-size", "7"});
        Client good(env.settings());
        std::vector<std::string> keys;
        for (int i = 0; i < 23; ++i) {
            keys.push_back("paged/k " + std::to_string(100 + i) + "+&.bin");
            REQUIRE(good.s3.put_bytes(kBucket, keys.back(), std::to_string(i)).ok());
        }
        REQUIRE(good.s3.put_bytes(kBucket, "paged/sub/x", "x").ok());
        env.clear_log();
        auto all = good.s3.list(kBucket, "paged/");
        REQUIRE_MESSAGE(all.ok(), (all.ok() ? "" : all.error().message));
        REQUIRE(all->size() == 24);
        for (std::size_t i = 0; i < keys.size(); ++i) CHECK((*all)[i].key == keys[i]);
        // 24 entries in pages of 7: four requests, the last three with a token.
        const auto log = env.log();
        CHECK(count_if(log, [](const auto& e) { return e["method"] == "GET" && contains(q(e), "list-type=2"); }) == 4);
        CHECK(count_if(log, [](const auto& e) { return contains(q(e), "continuation-token=page-"); }) == 3);
        // With a delimiter the common prefix counts as one entry, and the store sees only the files.
        std::vector<std::string> prefixes;
        auto top = good.s3.list(kBucket, "paged/", "/", &prefixes);
        REQUIRE(top.ok());
        CHECK(top->size() == 23);
        CHECK(prefixes == std::vector<std::string>{"paged/sub/"});
        auto store = make_s3_store(good.s3, S3Url{kBucket, "paged/"});
        auto names = store->list("");
        REQUIRE(names.ok());
        CHECK(names->size() == 23);
    }

    TEST_CASE("multipart complete: a lost answer is accepted only for this very upload") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        S3Settings settings = env.settings();
        settings.multipart_threshold = 5u << 20;
        settings.part_size = 5u << 20;
        Client good(settings, 1);
        const std::string key = "mp/complete lost+1.bin";
        const std::string old_data = pattern((11u << 20) + 3, 21);
        const std::string new_data = pattern((11u << 20) + 3, 22);  // same size, other bytes
        REQUIRE(good.s3.put_file(kBucket, key, write_file(tmp.file("old.bin"), old_data)).ok());

        SUBCASE("the complete fails for good: an error, the older object of the same size is not claimed") {
            env.inject({{"method", "POST"}, {"query_contains", "uploadId="}, {"status", 500}, {"count", 20}});
            auto r = good.s3.put_file(kBucket, key, write_file(tmp.file("new.bin"), new_data));
            env.clear_injections();
            REQUIRE_FALSE(r.ok());
            CHECK_MESSAGE(contains(r.error().message, "complete"), r.error().message);
            auto back = good.s3.get(kBucket, key);
            REQUIRE(back.ok());
            CHECK(*back == old_data);
        }
        SUBCASE("s3rver completed it but the answer was lost: the upload token proves it landed") {
            env.inject({{"method", "POST"}, {"query_contains", "uploadId="}, {"status", 500}, {"count", 1},
                        {"mode", "lost"}});
            auto r = good.s3.put_file(kBucket, key, write_file(tmp.file("new.bin"), new_data));
            env.clear_injections();
            REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
            auto back = good.s3.get(kBucket, key);
            REQUIRE(back.ok());
            CHECK(*back == new_data);
        }
    }

    TEST_CASE("Shelby store through the S3 gateway: bucket = account, shelby:// locations") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        S3Settings gw = env.settings();
        gw.put_headers = {"x-amz-meta-expiration-seconds: 3600"};
        Client gateway(gw);
        HttpClient http(fast_options());
        ShelbySettings ss;
        ss.rpc_url = "http://127.0.0.1:9";
        ShelbyReader reader(http, ss);
        auto store = shelbyfs::open_shelby_store("shelby://0xabc123/ckpt dir", reader, &gateway.s3);
        REQUIRE_MESSAGE(store.ok(), (store.ok() ? "" : store.error().message));
        CHECK((*store)->describe() == "shelby://0xabc123/ckpt dir/");
        CHECK((*store)->location("objects/a+b") == "shelby://0xabc123/ckpt dir/objects/a+b");
        REQUIRE((*store)->put_bytes("objects/a+b", "gateway bytes").ok());
        REQUIRE((*store)->put_file("objects/c d", write_file(tmp.file("f"), "file bytes")).ok());
        auto h = gateway.s3.head("0xabc123", "ckpt dir/objects/a+b");
        REQUIRE(h.ok());
        CHECK(h->size == 13);
        REQUIRE(h->meta("expiration-seconds") != nullptr);
        CHECK(*h->meta("expiration-seconds") == "3600");
        auto l = (*store)->list("objects/");
        REQUIRE(l.ok());
        CHECK(*l == std::vector<std::string>{"a+b", "c d"});
        auto g = (*store)->get("objects/c d");
        REQUIRE(g.ok());
        CHECK(*g == "file bytes");

        // Neither a gateway nor a usable CLI: NotSupported, saying what to configure.
        ss.cli = tmp.file("no-such-shelby-cli");
        ShelbyReader no_cli(http, ss);
        auto none = shelbyfs::open_shelby_store("shelby://0xabc123/x", no_cli, nullptr);
        REQUIRE_FALSE(none.ok());
        CHECK(none.error().code == Errc::NotSupported);
        CHECK_MESSAGE(contains(none.error().message, "gateway"), none.error().message);
        auto bad = shelbyfs::open_shelby_store("shelby://nothex/x", reader, &gateway.s3);
        REQUIRE_FALSE(bad.ok());
        CHECK(bad.error().code == Errc::InvalidArgument);
    }

    TEST_CASE("list: prefix, delimiter, missing prefix; wrong secret rejected") {
        auto& env = S3Env::shared();
        Client good(env.settings());
        for (const std::string k : {"ls/a", "ls/b/c", "ls/b/d", "ls/e f", "lsx"}) {
            REQUIRE(good.s3.put_bytes(kBucket, k, k).ok());
        }
        auto all = good.s3.list(kBucket, "ls/");
        REQUIRE_MESSAGE(all.ok(), (all.ok() ? "" : all.error().message));
        std::vector<std::string> keys;
        for (const auto& e : *all) keys.push_back(e.key);
        CHECK(keys == std::vector<std::string>{"ls/a", "ls/b/c", "ls/b/d", "ls/e f"});
        CHECK((*all)[0].size == 4);
        CHECK((*all)[1].size == 6);

        std::vector<std::string> prefixes;
        auto top = good.s3.list(kBucket, "ls/", "/", &prefixes);
        REQUIRE(top.ok());
        keys.clear();
        for (const auto& e : *top) keys.push_back(e.key);
        CHECK(keys == std::vector<std::string>{"ls/a", "ls/e f"});
        CHECK(prefixes == std::vector<std::string>{"ls/b/"});

        auto none = good.s3.list(kBucket, "no-such-prefix/");
        REQUIRE(none.ok());
        CHECK(none->empty());

        Client bad(env.wrong_secret());
        check_rejected(bad.s3.list(kBucket, "ls/"), "SignatureDoesNotMatch");
    }

    TEST_CASE("awkward keys: put, head, range read, get and list give the raw keys back") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        Client good(env.settings());
        const std::string base = "awk/";
        for (std::size_t i = 0; i < kAwkwardKeys.size(); ++i) {
            const std::string key = base + kAwkwardKeys[i];
            CAPTURE(key);
            const std::string data = pattern(3000 + i, static_cast<unsigned>(i));
            if (i % 2 == 0) {
                auto r = good.s3.put_bytes(kBucket, key, data);
                REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
            } else {
                auto r = good.s3.put_file(kBucket, key, write_file(tmp.file("f" + std::to_string(i)), data));
                REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
            }
            auto h = good.s3.head(kBucket, key);
            REQUIRE_MESSAGE(h.ok(), (h.ok() ? "" : h.error().message));
            CHECK(h->size == data.size());
            auto rr = wait(good.s3.read_range(kBucket, key, 17, 1000));
            REQUIRE_MESSAGE(rr.ok(), (rr.ok() ? "" : rr.error().message));
            CHECK(*rr == data.substr(17, 1000));
            auto g = good.s3.get(kBucket, key);
            REQUIRE(g.ok());
            CHECK(*g == data);
            // Through S3Reader too.
            shelbyfs::S3Reader reader(good.s3);
            auto viar = wait(reader.read_range("s3://bucket/" + key, 1, 2));
            REQUIRE(viar.ok());
            CHECK(*viar == data.substr(1, 2));
        }
        auto listed = good.s3.list(kBucket, base);
        REQUIRE_MESSAGE(listed.ok(), (listed.ok() ? "" : listed.error().message));
        std::vector<std::string> got;
        for (const auto& e : *listed) got.push_back(e.key);
        std::sort(got.begin(), got.end());
        std::vector<std::string> expect;
        for (const auto& k : kAwkwardKeys) expect.push_back(base + k);
        std::sort(expect.begin(), expect.end());
        CHECK(got == expect);
        // Prefixes with awkward characters too.
        auto nested = good.s3.list(kBucket, "awk/nested/dir with space/");
        REQUIRE(nested.ok());
        REQUIRE(nested->size() == 1);
        CHECK((*nested)[0].key == "awk/nested/dir with space/a+b=c%d&e?f#g~h");
        std::vector<std::string> prefixes;
        auto rolled = good.s3.list(kBucket, "awk/", "/", &prefixes);
        REQUIRE(rolled.ok());
        // Only the top-level keys come back as objects. (s3rver 3.7.1 drops
        // CommonPrefixes from some delimiter listings, so those are only
        // checked to be among the expected ones.)
        std::vector<std::string> rolled_keys;
        for (const auto& e : *rolled) rolled_keys.push_back(e.key);
        std::vector<std::string> top;
        for (const auto& k : kAwkwardKeys) {
            if (k.find('/') == std::string::npos) top.push_back(base + k);
        }
        std::sort(top.begin(), top.end());
        std::sort(rolled_keys.begin(), rolled_keys.end());
        CHECK(rolled_keys == top);
        for (const auto& p : prefixes) {
            CAPTURE(p);
            CHECK((p == "awk/caf\xc3\xa9/" || p == "awk/nested/"));
        }
    }

    TEST_CASE("keys with dot segments are sent as they are, not resolved") {
        // S3 never resolves "." and ".." in keys. (s3rver stores such keys on
        // disk resolved, so only the wire is checked: the proxy log.)
        auto& env = S3Env::shared();
        Client good(env.settings());
        env.clear_log();
        for (const std::string key : {"dots/./c", "dots/x/../d"}) {
            CAPTURE(key);
            auto p = good.s3.put_bytes(kBucket, key, key);
            REQUIRE_MESSAGE(p.ok(), (p.ok() ? "" : p.error().message));
            auto h = good.s3.head(kBucket, key);
            REQUIRE_MESSAGE(h.ok(), (h.ok() ? "" : h.error().message));
            auto r = wait(good.s3.read_range(kBucket, key, 1, 3));
            REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
        }
        std::vector<std::string> paths;
        for (const auto& e : env.log()) {
            CHECK(e["accepted"] == true);
            paths.push_back(e["path"].get<std::string>());
        }
        CHECK(paths == std::vector<std::string>{"/bucket/dots/./c", "/bucket/dots/./c", "/bucket/dots/./c",
                                                "/bucket/dots/x/../d", "/bucket/dots/x/../d", "/bucket/dots/x/../d"});
    }

    TEST_CASE("awkward keys through make_s3_store") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        Client good(env.settings());
        auto store = shelbyfs::make_s3_store(good.s3, S3Url{kBucket, "awkstore"});
        CHECK(store->describe() == "s3://bucket/awkstore/");
        CHECK(store->location("a b") == "s3://bucket/awkstore/a b");
        std::vector<std::string> top;
        for (std::size_t i = 0; i < kAwkwardKeys.size(); ++i) {
            const std::string& key = kAwkwardKeys[i];
            CAPTURE(key);
            const std::string data = pattern(500 + i, static_cast<unsigned>(i + 40));
            if (i % 2 == 0) {
                REQUIRE(store->put_bytes(key, data).ok());
            } else {
                REQUIRE(store->put_file(key, write_file(tmp.file("f" + std::to_string(i)), data)).ok());
            }
            auto h = store->head(key);
            REQUIRE(h.ok());
            CHECK(*h == data.size());
            auto g = store->get(key);
            REQUIRE(g.ok());
            CHECK(*g == data);
            if (key.find('/') == std::string::npos) top.push_back(key);
        }
        std::sort(top.begin(), top.end());
        auto listed = store->list("");
        REQUIRE_MESSAGE(listed.ok(), (listed.ok() ? "" : listed.error().message));
        CHECK(*listed == top);  // sorted, no sub-prefixes
        auto nested = store->list("nested/dir with space/");
        REQUIRE(nested.ok());
        CHECK(*nested == std::vector<std::string>{"a+b=c%d&e?f#g~h"});
        auto deep = store->list("caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac/");
        REQUIRE(deep.ok());
        CHECK(*deep == std::vector<std::string>{"\xf0\x9f\x98\x80.bin"});
        auto missing = store->get("nope");
        REQUIRE_FALSE(missing.ok());
        CHECK(missing.error().code == Errc::NotFound);
        auto bad_key = store->put_bytes("../escape", "x");
        REQUIRE_FALSE(bad_key.ok());
        CHECK(bad_key.error().code == Errc::InvalidArgument);
    }

    TEST_CASE("range reads: exact bytes; past the end fails") {
        auto& env = S3Env::shared();
        Client good(env.settings());
        const std::string key = "range/obj.bin";
        const std::string data = pattern(100000, 5);
        REQUIRE(good.s3.put_bytes(kBucket, key, data).ok());
        // Never bytes=0-0 (s3rver returns the whole object for it).
        const std::vector<std::pair<std::uint64_t, std::uint64_t>> cases = {
            {0, 2}, {0, 100000}, {99999, 1}, {1, 99999}, {4096, 4096}, {65535, 3}, {12345, 54321}, {50000, 1}};
        for (const auto& [offset, length] : cases) {
            CAPTURE(offset);
            CAPTURE(length);
            auto r = wait(good.s3.read_range(kBucket, key, offset, length));
            REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
            CHECK(*r == data.substr(offset, length));
        }
        auto zero = wait(good.s3.read_range(kBucket, key, 500, 0));
        REQUIRE(zero.ok());
        CHECK(zero->empty());

        auto past = wait(good.s3.read_range(kBucket, key, 100000, 10));
        REQUIRE_FALSE(past.ok());
        CHECK(past.error().code == Errc::HttpStatus);
        auto over = wait(good.s3.read_range(kBucket, key, 99990, 20));
        REQUIRE_FALSE(over.ok());
        CHECK(over.error().code == Errc::HttpStatus);
        auto missing = wait(good.s3.read_range(kBucket, "range/missing", 0, 10));
        REQUIRE_FALSE(missing.ok());
        CHECK(missing.error().code == Errc::NotFound);
    }

    TEST_CASE("retries: 503 twice on a part upload, a reset GET") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        S3Settings settings = env.settings();
        settings.multipart_threshold = 5u << 20;
        settings.part_size = 5u << 20;
        Client good(settings);
        const std::string data = pattern((11u << 20) + 7, 21);
        const std::string file = write_file(tmp.file("retry.bin"), data);
        const std::string key = "retry/mp.bin";

        env.clear_log();
        env.inject({{"method", "PUT"}, {"query_contains", "partNumber=2"}, {"status", 503}, {"count", 2}});
        auto r = good.s3.put_file(kBucket, key, file);
        env.clear_injections();
        REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
        CHECK(good.s3.stats().multipart_uploads == 1);
        CHECK(good.s3.stats().parts == 3);
        CHECK(good.http.stats().retries >= 2);
        {
            const auto log = env.log();
            CHECK(count_if(log, [](const auto& e) {
                      return e["method"] == "PUT" && contains(q(e), "partNumber=2") && e["status"] == 503;
                  }) == 2);
            CHECK(count_if(log, [](const auto& e) {
                      return e["method"] == "PUT" && contains(q(e), "partNumber=2") && e["status"] == 200;
                  }) == 1);
        }
        auto back = good.s3.get(kBucket, key);
        REQUIRE(back.ok());
        CHECK(*back == data);

        // A connection reset half-way through a download.
        const std::string small = pattern(200000, 8);
        REQUIRE(good.s3.put_bytes(kBucket, "retry/get.bin", small).ok());
        env.clear_log();
        env.inject({{"method", "GET"}, {"path_contains", "retry/get.bin"}, {"mode", "reset"}, {"count", 1}});
        auto g = wait(good.s3.read_range(kBucket, "retry/get.bin", 1000, 150000));
        env.clear_injections();
        REQUIRE_MESSAGE(g.ok(), (g.ok() ? "" : g.error().message));
        CHECK(*g == small.substr(1000, 150000));
        const auto log = env.log();
        CHECK(count_if(log, [](const auto& e) { return e["method"] == "GET"; }) == 2);

        // 503 on a whole-object GET and on a simple PUT: both retried.
        env.inject({{"method", "GET"}, {"path_contains", "retry/get.bin"}, {"status", 503}, {"count", 1}});
        auto whole = good.s3.get(kBucket, "retry/get.bin");
        env.clear_injections();
        REQUIRE(whole.ok());
        CHECK(*whole == small);
        env.inject({{"method", "PUT"}, {"path_contains", "retry/put.bin"}, {"status", 500}, {"count", 1}});
        auto put = good.s3.put_bytes(kBucket, "retry/put.bin", small);
        env.clear_injections();
        REQUIRE(put.ok());
        CHECK(good.s3.get(kBucket, "retry/put.bin").value() == small);

        // Out of retries: the error names S3's code.
        Client noretry(settings, 0);
        env.inject({{"method", "GET"}, {"path_contains", "retry/get.bin"}, {"status", 503}, {"count", 1}});
        auto fail = wait(noretry.s3.read_range(kBucket, "retry/get.bin", 10, 10));
        env.clear_injections();
        REQUIRE_FALSE(fail.ok());
        CHECK_MESSAGE(contains(fail.error().message, "503"), fail.error().message);
    }

    TEST_CASE("session token: required when the server has one") {
        shelbyfs::test::require_s3_prereqs();
        S3Env env({"--bucket", "bucket", "--session-token", "tok/en+with=chars"});
        const S3Settings with = env.settings();
        REQUIRE(with.session_token == "tok/en+with=chars");
        Client good(with);
        REQUIRE(good.s3.put_bytes(kBucket, "t/a b", "hello token").ok());
        auto h = good.s3.head(kBucket, "t/a b");
        REQUIRE(h.ok());
        CHECK(h->size == 11);
        auto r = wait(good.s3.read_range(kBucket, "t/a b", 6, 5));
        REQUIRE(r.ok());
        CHECK(*r == "token");
        auto l = good.s3.list(kBucket, "t/");
        REQUIRE(l.ok());
        CHECK(l->size() == 1);

        S3Settings without = with;
        without.session_token.clear();
        Client bad(without);
        check_rejected(bad.s3.put_bytes(kBucket, "t/other", "x"), "InvalidAccessKeyId");
        check_rejected(wait(bad.s3.read_range(kBucket, "t/a b", 6, 5)), "InvalidAccessKeyId");

        S3Settings wrong = with;
        wrong.session_token = "not-the-token";
        Client worse(wrong);
        check_rejected(worse.s3.list(kBucket, "t/"), "InvalidToken");
        auto gone = good.s3.head(kBucket, "t/other");
        REQUIRE_FALSE(gone.ok());
        CHECK(gone.error().code == Errc::NotFound);
    }

    TEST_CASE("anonymous settings against the verifying proxy: AccessDenied") {
        auto& env = S3Env::shared();
        S3Settings anon = env.settings();
        anon.access_key_id.clear();
        anon.secret_access_key.clear();
        Client c(anon);
        check_rejected(wait(c.s3.read_range(kBucket, "auth/range.bin", 0, 10)), "AccessDenied");
        check_rejected(c.s3.put_bytes(kBucket, "anon/x", "x"), "AccessDenied");
        check_rejected(c.s3.list(kBucket, ""), "AccessDenied");
        Client good(env.settings());
        auto h = good.s3.head(kBucket, "anon/x");
        REQUIRE_FALSE(h.ok());
        CHECK(h.error().code == Errc::NotFound);
    }

    TEST_CASE("ObjectStore via make_s3_store under a prefix with spaces and '+'") {
        auto& env = S3Env::shared();
        ScratchDir tmp;
        Client good(env.settings());
        auto store = shelbyfs::make_s3_store(good.s3, S3Url{kBucket, "store base/a+b"});
        CHECK(store->describe() == "s3://bucket/store base/a+b/");
        const std::string big = pattern(300000, 9);
        REQUIRE(store->put_file("objects/ab cd", write_file(tmp.file("obj"), big)).ok());
        REQUIRE(store->put_bytes("index/r1.json", "{\"a\":1}").ok());
        REQUIRE(store->put_bytes("index/r0.json", "{}").ok());
        REQUIRE(store->put_bytes("index/sub/deeper.json", "{}").ok());
        REQUIRE(store->put_bytes("top", "t").ok());
        auto h = store->head("objects/ab cd");
        REQUIRE(h.ok());
        CHECK(*h == big.size());
        auto g = store->get("objects/ab cd");
        REQUIRE(g.ok());
        CHECK(*g == big);
        // The object really lives under the prefix.
        auto raw = good.s3.head(kBucket, "store base/a+b/objects/ab cd");
        REQUIRE(raw.ok());
        CHECK(raw->size == big.size());
        // And reads through its location().
        shelbyfs::S3Reader reader(good.s3);
        auto viar = wait(reader.read_range(store->location("objects/ab cd"), 299990, 10));
        REQUIRE(viar.ok());
        CHECK(*viar == big.substr(299990, 10));

        auto idx = store->list("index/");
        REQUIRE(idx.ok());
        CHECK(*idx == std::vector<std::string>{"r0.json", "r1.json"});
        auto root = store->list("");
        REQUIRE(root.ok());
        CHECK(*root == std::vector<std::string>{"top"});
        auto none = store->list("missing/");
        REQUIRE(none.ok());
        CHECK(none->empty());
        auto hm = store->head("objects/none");
        REQUIRE_FALSE(hm.ok());
        CHECK(hm.error().code == Errc::NotFound);
        // A sibling prefix "store base/a+bc" must not leak into the list.
        REQUIRE(good.s3.put_bytes(kBucket, "store base/a+bc/x", "x").ok());
        auto root2 = store->list("");
        REQUIRE(root2.ok());
        CHECK(*root2 == std::vector<std::string>{"top"});
    }
}

// ---------------------------------------------------------------------------
// Shelby RPC

namespace {

const std::string kAccount = "0x" + std::string("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");

struct Rpc {
    explicit Rpc(std::vector<std::string> args = {}) : server("testlib.shelby_rpc", std::move(args)) {}
    std::string url() const { return server.str("url"); }
    // The blob file the server serves for `name` (the server's --dir is <scratch>/work).
    std::string add(const std::string& name, const std::string& data) const {
        const std::filesystem::path p = std::filesystem::path(server.dir().file("work")) / kAccount / name;
        std::filesystem::create_directories(p.parent_path());
        return write_file(p.string(), data);
    }
    PyServer server;
};

const std::vector<std::string> kBlobNames = {
    "plain", "with space.bin", "a+b=c", "per%cent", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac.bin",
    "dir/sub dir/x+y=z%20.bin", "amp&q?h#t~"};

void check_rpc_reads(const Rpc& rpc, const std::string& api_key = "") {
    HttpClient http(fast_options());
    ShelbySettings s;
    s.rpc_url = rpc.url() + "/";
    s.api_key = api_key;
    ShelbyReader reader(http, s);
    for (std::size_t i = 0; i < kBlobNames.size(); ++i) {
        const std::string& name = kBlobNames[i];
        CAPTURE(name);
        const std::string data = pattern(20000 + i, static_cast<unsigned>(i + 1));
        rpc.add(name, data);
        const std::string loc = "shelby://" + kAccount + "/" + name;
        for (const auto& [offset, length] : std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                 {0, 1}, {0, 20000}, {1, 2}, {12345, 7000}, {19999, 1}, {5000, 0}}) {
            auto r = wait(reader.read_range(loc, offset, length));
            REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
            CHECK(*r == data.substr(offset, length));
        }
        auto g = reader.get(loc);
        REQUIRE(g.ok());
        CHECK(*g == data);
    }
    auto missing = wait(reader.read_range("shelby://" + kAccount + "/no such blob", 0, 10));
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().code == Errc::NotFound);
    auto gm = reader.get("shelby://" + kAccount + "/no+such");
    REQUIRE_FALSE(gm.ok());
    CHECK(gm.error().code == Errc::NotFound);
    auto past = wait(reader.read_range("shelby://" + kAccount + "/plain", 20000, 5));
    REQUIRE_FALSE(past.ok());
    CHECK(past.error().code == Errc::HttpStatus);
    // A range that starts inside the blob but runs past its end: the server
    // sends the bytes it has; that is final, not a transient short read.
    const auto before = http.stats().requests;
    auto over = wait(reader.read_range("shelby://" + kAccount + "/plain", 19990, 20));
    REQUIRE_FALSE(over.ok());
    CHECK(over.error().code == Errc::HttpStatus);
    CHECK_MESSAGE(contains(over.error().message, "past the end"), over.error().message);
    CHECK(http.stats().requests - before == 1);
    auto noname = wait(reader.read_range("shelby://" + kAccount + "/dir/", 0, 5));
    REQUIRE_FALSE(noname.ok());
    CHECK(noname.error().code == Errc::InvalidArgument);
}

}  // namespace

TEST_SUITE("shelby") {
    TEST_CASE("ShelbyReader: exact range bytes with Content-Range") {
        Rpc rpc;
        check_rpc_reads(rpc);
    }

    TEST_CASE("ShelbyReader: exact range bytes without Content-Range") {
        Rpc rpc({"--no-content-range"});
        check_rpc_reads(rpc);
    }

    TEST_CASE("ShelbyReader: blob_url percent-encodes the name, '/' kept") {
        HttpClient http(fast_options());
        ShelbySettings s;
        s.rpc_url = "http://127.0.0.1:9/shelby/";
        ShelbyReader reader(http, s);
        auto u = shelbyfs::parse_shelby_url("shelby://" + kAccount + "/d i/a+b=c%");
        REQUIRE(u.ok());
        CHECK(reader.blob_url(*u) == "http://127.0.0.1:9/shelby/v1/blobs/" + kAccount + "/d%20i/a%2Bb%3Dc%25");
    }

    TEST_CASE("ShelbyReader: Bearer key required when the server has one") {
        Rpc rpc({"--api-key", "sekrit-key"});
        check_rpc_reads(rpc, "sekrit-key");
        HttpClient http(fast_options());
        for (const std::string key : {"", "wrong-key"}) {
            CAPTURE(key);
            ShelbySettings s;
            s.rpc_url = rpc.url();
            s.api_key = key;
            ShelbyReader reader(http, s);
            auto r = wait(reader.read_range("shelby://" + kAccount + "/plain", 0, 10));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::HttpStatus);
            CHECK_MESSAGE(contains(r.error().message, "401"), r.error().message);
            CHECK_MESSAGE(!contains(r.error().message, "sekrit"), r.error().message);
            auto g = reader.get("shelby://" + kAccount + "/plain");
            REQUIRE_FALSE(g.ok());
            CHECK(g.error().code == Errc::HttpStatus);
            CHECK_MESSAGE(contains(g.error().message, "401"), g.error().message);
        }
    }

    TEST_CASE("parse_shelby_url") {
        auto ok = shelbyfs::parse_shelby_url("shelby://" + kAccount + "/a/b c");
        REQUIRE(ok.ok());
        CHECK(ok->account == kAccount);
        CHECK(ok->name == "a/b c");
        // Addresses are hex: uppercase digits are taken as lowercase, what the RPC serves.
        auto upper = shelbyfs::parse_shelby_url("shelby://0xABCdef/Name");
        REQUIRE(upper.ok());
        CHECK(upper->account == "0xabcdef");
        CHECK(upper->name == "Name");
        auto short_acct = shelbyfs::parse_shelby_url("shelby://0x1/x");
        REQUIRE(short_acct.ok());
        CHECK(short_acct->account == "0x1");
        auto prefix = shelbyfs::parse_shelby_url("shelby://0xab");
        REQUIRE(prefix.ok());
        CHECK(prefix->name.empty());
        for (const std::string& bad : std::vector<std::string>{"shelby:///name", "shelby://", "shelby://0x/x", "shelby://abcdef/x",
                                      "shelby://0xzz/x", "shelby://0x" + std::string(65, 'a') + "/x",
                                      "s3://bucket/x", "http://0xab/x"}) {
            CAPTURE(bad);
            auto r = shelbyfs::parse_shelby_url(bad);
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::InvalidArgument);
        }
        auto no_acct = shelbyfs::parse_shelby_url("shelby:///name");
        REQUIRE_FALSE(no_acct.ok());
        CHECK(contains(no_acct.error().message, "account"));
        auto long_name = shelbyfs::parse_shelby_url("shelby://0xab/" + std::string(1025, 'n'));
        REQUIRE_FALSE(long_name.ok());
        CHECK(long_name.error().code == Errc::InvalidArgument);
    }
}
