// HttpStore (open_object_store on a URL) against the in-process TestServer: encoding, listings, errors.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "shelbyfs/http_client.h"
#include "shelbyfs/object_store.h"
#include "test_server.h"

using namespace std::chrono_literals;
using shelbyfs::Errc;
using shelbyfs::HttpClient;
using shelbyfs::HttpOptions;
using shelbyfs::ObjectStore;
using shelbyfs::open_object_store;
using shelbyfs::test::Fault;
using shelbyfs::test::Listing;
using shelbyfs::test::TempDir;
using shelbyfs::test::TestServer;

namespace {

using Names = std::vector<std::string>;

using shelbyfs::test::pattern;

HttpOptions fast_options() { return shelbyfs::test::fast_options(2); }

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// The store's calls block; run one on a thread so a hang fails the test instead of stalling it.
template <typename F>
auto bounded(F call, std::chrono::milliseconds limit = 10000ms) {
    auto f = std::async(std::launch::async, std::move(call));
    if (f.wait_for(limit) != std::future_status::ready) {
        FAIL("store call did not complete within " << limit.count() << " ms");
    }
    return f.get();
}

// A server, a client and a store rooted at <server>/store (given without its trailing '/').
struct Fixture {
    TestServer server;
    HttpClient client{fast_options()};
    std::unique_ptr<ObjectStore> store;

    Fixture() {
        auto s = open_object_store(server.url("/store"), &client);
        REQUIRE_MESSAGE(s.ok(), s.error().message);
        store = std::move(s).value();
    }
};

}  // namespace

TEST_SUITE("object_store_http") {
    TEST_CASE("the base URL is normalised to end in '/'") {
        Fixture fx;
        CHECK(fx.store->describe() == fx.server.url("/store/"));
        CHECK(fx.store->location("objects/abc") == fx.server.url("/store/objects/abc"));
        auto already = open_object_store(fx.server.url("/store/"), &fx.client);
        REQUIRE(already.ok());
        CHECK(already.value()->describe() == fx.server.url("/store/"));
        auto bare = open_object_store("http://127.0.0.1:" + std::to_string(fx.server.port()), &fx.client);
        REQUIRE(bare.ok());
        CHECK(bare.value()->describe() == fx.server.url("/"));
    }

    TEST_CASE("put then get and head round-trip through the server") {
        Fixture fx;
        TempDir dir;
        const std::string data = pattern((2 << 20) + 3);
        const std::string source = dir.write("ckpt.bin", data);

        auto f = bounded([&] { return fx.store->put_file("objects/big", source); });
        REQUIRE_MESSAGE(f.ok(), f.error().message);
        auto b = bounded([&] { return fx.store->put_bytes("index/rec.json", "{\"k\":1}"); });
        REQUIRE_MESSAGE(b.ok(), b.error().message);
        CHECK(contains(fx.server.last_request("/store/objects/big"), "PUT /store/objects/big HTTP/1.1\r\n"));
        CHECK(fx.server.object("/store/objects/big") == data);
        CHECK(fx.server.object("/store/index/rec.json") == "{\"k\":1}");

        auto g = bounded([&] { return fx.store->get("objects/big"); });
        REQUIRE_MESSAGE(g.ok(), g.error().message);
        CHECK(g.value() == data);
        auto h = bounded([&] { return fx.store->head("objects/big"); });
        REQUIRE_MESSAGE(h.ok(), h.error().message);
        CHECK(h.value() == data.size());
        CHECK(contains(fx.server.last_request("/store/objects/big"), "HEAD /store/objects/big HTTP/1.1\r\n"));
        auto r = bounded([&] { return fx.store->get("index/rec.json"); });
        REQUIRE(r.ok());
        CHECK(r.value() == "{\"k\":1}");
    }

    TEST_CASE("awkward keys are percent-encoded per segment on the wire") {
        Fixture fx;
        fx.server.set_listing(Listing::NginxJson);
        struct Case {
            std::string key;
            std::string wire;  // the request path the server must see
        };
        const std::vector<Case> cases = {
            {"with space", "/store/with%20space"},
            {"a+b=c", "/store/a%2Bb%3Dc"},
            {"100%", "/store/100%25"},
            {"%41", "/store/%2541"},
            {"caf\xC3\xA9", "/store/caf%C3%A9"},
            {"dir x/sub+/f?#&;", "/store/dir%20x/sub%2B/f%3F%23%26%3B"},
            {"keep-._~AZaz09", "/store/keep-._~AZaz09"},
        };
        for (const auto& c : cases) {
            CAPTURE(c.key);
            auto p = bounded([&] { return fx.store->put_bytes(c.key, "v:" + c.key); });
            REQUIRE_MESSAGE(p.ok(), p.error().message);
            CHECK(contains(fx.server.last_request(c.wire), "PUT " + c.wire + " HTTP/1.1\r\n"));
            CHECK(fx.server.object(c.wire) == "v:" + c.key);
            CHECK(fx.store->location(c.key) == fx.server.url(c.wire));
            auto g = bounded([&] { return fx.store->get(c.key); });
            REQUIRE_MESSAGE(g.ok(), g.error().message);
            CHECK(g.value() == "v:" + c.key);
            auto h = bounded([&] { return fx.store->head(c.key); });
            REQUIRE(h.ok());
            CHECK(h.value() == 2 + c.key.size());
        }
        // The listing decodes names back to the keys.
        auto top = bounded([&] { return fx.store->list(""); });
        REQUIRE_MESSAGE(top.ok(), top.error().message);
        CHECK(top.value() == Names{"%41", "100%", "a+b=c", "caf\xC3\xA9", "keep-._~AZaz09", "with space"});
        auto sub = bounded([&] { return fx.store->list("dir x/sub+/"); });
        REQUIRE_MESSAGE(sub.ok(), sub.error().message);
        CHECK(sub.value() == Names{"f?#&;"});
        CHECK(fx.server.requests("/store/dir%20x/sub%2B/") == 1);
    }

    TEST_CASE("list parses generated nginx JSON and HTML listings: files only, sorted") {
        Fixture fx;
        SUBCASE("nginx autoindex json") { fx.server.set_listing(Listing::NginxJson); }
        SUBCASE("html index") { fx.server.set_listing(Listing::Html); }
        for (const std::string key :
             {"ckpt/zeta", "ckpt/Alpha", "ckpt/b c", "ckpt/x+y", "ckpt/sub/deep", "ckpt/\xC3\xA9t\xC3\xA9"}) {
            auto p = bounded([&] { return fx.store->put_bytes(key, "x"); });
            REQUIRE_MESSAGE(p.ok(), p.error().message);
        }
        auto r = bounded([&] { return fx.store->list("ckpt/"); });
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == Names{"Alpha", "b c", "x+y", "zeta", "\xC3\xA9t\xC3\xA9"});
        CHECK(contains(fx.server.last_request("/store/ckpt/"), "GET /store/ckpt/ HTTP/1.1\r\n"));
        auto deep = bounded([&] { return fx.store->list("ckpt/sub/"); });
        REQUIRE(deep.ok());
        CHECK(deep.value() == Names{"deep"});
        auto top = bounded([&] { return fx.store->list(""); });
        REQUIRE(top.ok());
        CHECK(top.value().empty());  // only the "ckpt" collection
    }

    TEST_CASE("list parses listings in the shapes real servers write") {
        Fixture fx;
        std::string body;
        Names expected;
        SUBCASE("nginx json, with other and directory entries") {
            body = R"([
{ "name":"sub", "type":"directory", "mtime":"Wed, 01 Jan 2025 00:00:00 GMT" },
{ "name":"a \"quoted\" name", "type":"file", "mtime":"Wed, 01 Jan 2025 00:00:00 GMT", "size":12 },
{ "name":"fifo", "type":"other", "mtime":"Wed, 01 Jan 2025 00:00:00 GMT" },
{ "name":"caf\u00e9", "type":"file", "mtime":"Wed, 01 Jan 2025 00:00:00 GMT", "size":1 },
{ "name":"x.partial-1-2", "type":"file", "size":1 },
{ "name":"..", "type":"file" },
{ "type":"file" },
{ "name":7, "type":"file" },
"junk"
]
)";
            expected = {"a \"quoted\" name", "caf\xC3\xA9"};
        }
        SUBCASE("empty json array") {
            body = "[]";
            expected = {};
        }
        SUBCASE("nginx html") {
            body =
                "<html>\r\n<head><title>Index of /store/c/</title></head>\r\n<body>\r\n"
                "<h1>Index of /store/c/</h1><hr><pre><a href=\"../\">../</a>\r\n"
                "<a href=\"sub/\">sub/</a>                 01-Jan-2025 00:00       -\r\n"
                "<a href=\"a%20b\">a b</a>                 01-Jan-2025 00:00       3\r\n"
                "<a href=\"./t:1\">t:1</a>                 01-Jan-2025 00:00       3\r\n"
                "<a href=\"x%2By%3D%25\">x+y=%</a>         01-Jan-2025 00:00       3\r\n"
                "<a href=\"a-name-longer-than-the-column.bin\">a-name-longer-than-the-co..&gt;</a>\r\n"
                "</pre><hr></body>\r\n</html>\r\n";
            expected = {"a b", "a-name-longer-than-the-column.bin", "t:1", "x+y=%"};
        }
        SUBCASE("apache html, with sort links, icons, and absolute links") {
            body =
                "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of /c</title>"
                "</head><body><h1>Index of /c</h1><table><tr><th><a href=\"?C=N;O=D\">Name</a></th>"
                "<th><a href=\"?C=M;O=A\">Last modified</a></th></tr>"
                "<tr><td><a href=\"/store/\">Parent Directory</a></td></tr>"
                "<tr><td><a href=\"f%C3%A9.bin\"><img src=\"/icons/binary.gif\"></a></td>"
                "<td><a href=\"f%C3%A9.bin\">f\xC3\xA9.bin</a></td></tr>"
                "<tr><td><A HREF='Q&amp;A'>Q&amp;A</A></td></tr>"
                "<tr><td><a href=unquoted.txt>unquoted.txt</a></td></tr>"
                "<tr><td><a href=\"http://example.com/\">elsewhere</a> <a href=\"mailto:x@y\">mail</a>"
                " <a href=\"#top\">top</a> <a href=\"bad%zz\">bad</a> <a href=\"deep/er\">deep</a></td></tr>"
                "</table></body></html>\n";
            expected = {"Q&A", "f\xC3\xA9.bin", "unquoted.txt"};
        }
        SUBCASE("python http.server html") {
            body =
                "<!DOCTYPE HTML>\n<html lang=\"en\">\n<head>\n<title>Directory listing for /c/</title>\n</head>\n"
                "<body>\n<h1>Directory listing for /c/</h1>\n<hr>\n<ul>\n"
                "<li><a href=\"%40home/\">@home/</a></li>\n"
                "<li><a href=\"rec%201.json\">rec 1.json</a></li>\n"
                "<li><a href=\"z\">z</a></li>\n</ul>\n<hr>\n</body>\n</html>\n";
            expected = {"rec 1.json", "z"};
        }
        SUBCASE("html with no links") {
            body = "<html><body>nothing here</body></html>";
            expected = {};
        }
        fx.server.put("/store/c/", body);
        auto r = bounded([&] { return fx.store->list("c/"); });
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == expected);
    }

    TEST_CASE("a listing that is broken JSON is an error naming the prefix and base") {
        Fixture fx;
        std::string body;
        SUBCASE("truncated") { body = R"([{"name":"a","type":"file"},{"name":)"; }
        SUBCASE("an object, not an array") { body = R"({"name":"a","type":"file"})"; }
        SUBCASE("invalid UTF-8") { body = "[{\"name\":\"\xC3\",\"type\":\"file\"}]"; }
        fx.server.put("/store/c/", body);
        auto r = bounded([&] { return fx.store->list("c/"); });
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(contains(r.error().message, "'c/'"));
        CHECK(contains(r.error().message, fx.server.url("/store/")));
        CHECK(contains(r.error().message, "JSON"));
    }

    TEST_CASE("a listing that answers 404 is an empty list") {
        Fixture fx;
        SUBCASE("no listing support") {}
        SUBCASE("listing support, nothing under the prefix") { fx.server.set_listing(Listing::NginxJson); }
        auto r = bounded([&] { return fx.store->list("never/written/"); });
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value().empty());
        CHECK(fx.server.requests("/store/never/written/") == 1);
        auto top = bounded([&] { return fx.store->list(""); });
        REQUIRE_MESSAGE(top.ok(), top.error().message);
        CHECK(top.value().empty());
        CHECK(fx.server.requests("/store/") == 1);
    }

    TEST_CASE("a listing failing with another status is an error") {
        Fixture fx;
        fx.server.set_fault("/store/c/", Fault::Status, -1, 403);
        auto r = bounded([&] { return fx.store->list("c/"); });
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(contains(r.error().message, "list 'c/' in " + fx.server.url("/store/") + ": "));
        CHECK(contains(r.error().message, "HTTP 403"));
    }

    TEST_CASE("missing objects are NotFound, naming the key and base") {
        Fixture fx;
        auto h = bounded([&] { return fx.store->head("objects/none"); });
        REQUIRE_FALSE(h.ok());
        CHECK(h.error().code == Errc::NotFound);
        CHECK(contains(h.error().message, "head 'objects/none' in " + fx.server.url("/store/") + ": "));
        auto g = bounded([&] { return fx.store->get("objects/none"); });
        REQUIRE_FALSE(g.ok());
        CHECK(g.error().code == Errc::NotFound);
        CHECK(contains(g.error().message, "get 'objects/none' in " + fx.server.url("/store/") + ": "));
    }

    TEST_CASE("invalid keys are rejected without a request") {
        Fixture fx;
        TempDir dir;
        const std::string source = dir.write("src", "x");
        const std::vector<std::string> keys = {"", "/abs", "a//b", "a/./b", "../up", "a/..", std::string("a\0b", 3)};
        for (const std::string& key : keys) {
            CAPTURE(key);
            for (const auto& r : {fx.store->put_bytes(key, "x"), fx.store->put_file(key, source)}) {
                REQUIRE_FALSE(r.ok());
                CHECK(r.error().code == Errc::InvalidArgument);
                CHECK(contains(r.error().message, fx.server.url("/store/")));
            }
            auto h = fx.store->head(key);
            REQUIRE_FALSE(h.ok());
            CHECK(h.error().code == Errc::InvalidArgument);
            auto g = fx.store->get(key);
            REQUIRE_FALSE(g.ok());
            CHECK(g.error().code == Errc::InvalidArgument);
        }
        auto l = fx.store->list("no-slash");
        REQUIRE_FALSE(l.ok());
        CHECK(l.error().code == Errc::InvalidArgument);
        CHECK(fx.client.stats().requests == 0);
        CHECK(fx.server.connections() == 0);
    }

    TEST_CASE("put_file of a missing source fails with Io and sends nothing") {
        Fixture fx;
        TempDir dir;
        auto r = bounded([&] { return fx.store->put_file("objects/x", dir.file("missing")); });
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Io);
        CHECK(contains(r.error().message, "put 'objects/x' in " + fx.server.url("/store/") + ": "));
        CHECK(contains(r.error().message, dir.file("missing")));
        CHECK(fx.client.stats().requests == 0);
        CHECK(fx.server.paths().empty());
    }

    TEST_CASE("a put cut off on every attempt fails and leaves no object") {
        Fixture fx;
        TempDir dir;
        const std::string source = dir.write("src", pattern(1 << 20));
        fx.server.set_fault("/store/objects/x", Fault::ShortBody, -1);
        auto r = bounded([&] { return fx.store->put_file("objects/x", source); });
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Network);
        CHECK(contains(r.error().message, "put 'objects/x' in " + fx.server.url("/store/") + ": PUT "));
        CHECK(fx.server.requests("/store/objects/x") == 3);  // 1 + max_retries
        CHECK(fx.server.paths().empty());
    }
}
