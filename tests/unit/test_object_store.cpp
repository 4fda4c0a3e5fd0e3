// LocalStore (open_object_store on a directory): round trips, awkward and invalid keys, crash-safety of puts.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shelbyfs/object_store.h"

namespace fs = std::filesystem;
using shelbyfs::Errc;
using shelbyfs::ObjectStore;
using shelbyfs::open_object_store;

namespace {

// A fresh directory, removed with its contents at the end of the test.
class TempDir {
public:
    TempDir() {
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/shelbyfs-store-XXXXXX";
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

void write_file(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << data;
    out.close();
    REQUIRE(out.good());
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Deterministic, position-dependent bytes.
std::string pattern(std::size_t size, unsigned seed = 7) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 131 + i / 251 + seed) & 0xff);
    return s;
}

// Every path under `root`, relative, sorted (directories end in '/').
std::vector<std::string> tree(const std::string& root) {
    std::vector<std::string> out;
    for (const auto& entry : fs::recursive_directory_iterator(root)) {
        std::string rel = fs::relative(entry.path(), root).string();
        if (entry.is_directory()) rel += '/';
        out.push_back(rel);
    }
    std::sort(out.begin(), out.end());
    return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

std::unique_ptr<ObjectStore> open_local(const std::string& path) {
    auto store = open_object_store(path, nullptr);
    REQUIRE_MESSAGE(store.ok(), store.error().message);
    return std::move(store).value();
}

using Names = std::vector<std::string>;

}  // namespace

TEST_SUITE("object_store") {
    TEST_CASE("local store round-trips put_bytes, put_file, get, head and list") {
        TempDir dir;
        auto store = open_local(dir.file("store"));
        CHECK(store->describe() == dir.file("store"));
        const std::string source = dir.file("source.bin");
        const std::string data = pattern((3 << 20) + 17);
        write_file(source, data);

        REQUIRE(store->put_file("objects/big", source).ok());
        REQUIRE(store->put_bytes("index/rec.json", "{\"a\":1}").ok());
        REQUIRE(store->put_bytes("index/empty", "").ok());

        CHECK(store->location("objects/big") == dir.file("store/objects/big"));
        CHECK(read_file(dir.file("store/objects/big")) == data);
        auto got = store->get("objects/big");
        REQUIRE_MESSAGE(got.ok(), got.error().message);
        CHECK(got.value() == data);
        auto size = store->head("objects/big");
        REQUIRE(size.ok());
        CHECK(size.value() == data.size());
        auto rec = store->get("index/rec.json");
        REQUIRE(rec.ok());
        CHECK(rec.value() == "{\"a\":1}");
        auto empty = store->head("index/empty");
        REQUIRE(empty.ok());
        CHECK(empty.value() == 0);

        auto index = store->list("index/");
        REQUIRE(index.ok());
        CHECK(index.value() == Names{"empty", "rec.json"});
        auto top = store->list("");
        REQUIRE(top.ok());
        CHECK(top.value().empty());  // only sub-collections at the top
        // The source is untouched, and nothing but the objects was left behind.
        CHECK(read_file(source) == data);
        CHECK(tree(dir.file("store")) == Names{"index/", "index/empty", "index/rec.json", "objects/", "objects/big"});
    }

    TEST_CASE("put_file copies a source on another filesystem byte for byte") {
        // tmpfs to the temp dir's filesystem: copy_file_range refuses (EXDEV)
        // when the filesystem types differ, so this exercises the read/write path.
        if (!fs::is_directory("/dev/shm")) {
            MESSAGE("no /dev/shm: skipped");
            return;
        }
        TempDir dir;
        auto store = open_local(dir.path());
        const std::string source = "/dev/shm/shelbyfs-test-" + std::to_string(::getpid());
        const std::string data = pattern((5 << 20) + 99, 4);  // several 1 MiB buffers and a partial one
        write_file(source, data);
        auto r = store->put_file("objects/x", source);
        fs::remove(source);
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(read_file(dir.file("objects/x")) == data);
    }

    TEST_CASE("put over an existing object replaces it whole") {
        TempDir dir;
        auto store = open_local(dir.path());
        REQUIRE(store->put_bytes("k", pattern(5000, 1)).ok());
        write_file(dir.file("src"), pattern(10, 2));
        REQUIRE(store->put_file("k", dir.file("src")).ok());
        CHECK(store->get("k").value() == pattern(10, 2));
        REQUIRE(store->put_bytes("k", "x").ok());
        CHECK(store->get("k").value() == "x");
        CHECK(tree(dir.path()) == Names{"k", "src"});
    }

    TEST_CASE("missing objects are NotFound with the key and base in the message") {
        TempDir dir;
        auto store = open_local(dir.path());
        REQUIRE(store->put_bytes("sub/file", "x").ok());
        REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);  // opening it must not block
        for (const std::string key : {"nope", "sub/nope", "nope/deeper", "sub/file/deeper", "sub", "fifo"}) {
            CAPTURE(key);
            auto h = store->head(key);
            REQUIRE_FALSE(h.ok());
            CHECK(h.error().code == Errc::NotFound);
            CHECK(contains(h.error().message, "'" + key + "'"));
            CHECK(contains(h.error().message, dir.path()));
            auto g = store->get(key);
            REQUIRE_FALSE(g.ok());
            CHECK(g.error().code == Errc::NotFound);
            CHECK(contains(g.error().message, "'" + key + "'"));
            CHECK(contains(g.error().message, dir.path()));
        }
    }

    TEST_CASE("awkward keys with spaces, +, =, % and UTF-8 round-trip") {
        TempDir dir;
        auto store = open_local(dir.path());
        const std::vector<std::string> keys = {"with space",  "a+b",         "k=v",          "100%",
                                               "%41%2F",      "caf\xC3\xA9", "\xE6\x97\xA5", "dir with space/x=1+2%"};
        for (std::size_t i = 0; i < keys.size(); ++i) {
            CAPTURE(keys[i]);
            REQUIRE(store->put_bytes(keys[i], "value " + std::to_string(i)).ok());
            CHECK(read_file(dir.file(keys[i])) == "value " + std::to_string(i));
        }
        for (std::size_t i = 0; i < keys.size(); ++i) {
            CAPTURE(keys[i]);
            auto g = store->get(keys[i]);
            REQUIRE(g.ok());
            CHECK(g.value() == "value " + std::to_string(i));
        }
        auto top = store->list("");
        REQUIRE(top.ok());
        // Bytewise order: '%' < '+' < 'a' < 'c' < 'k' < 'w' < UTF-8 lead bytes.
        CHECK(top.value() == Names{"%41%2F", "100%", "a+b", "caf\xC3\xA9", "k=v", "with space", "\xE6\x97\xA5"});
        auto sub = store->list("dir with space/");
        REQUIRE(sub.ok());
        CHECK(sub.value() == Names{"x=1+2%"});
    }

    TEST_CASE("invalid keys are rejected by every call, naming the key, and touch nothing") {
        TempDir dir;
        auto store = open_local(dir.file("store"));
        write_file(dir.file("src"), "data");
        std::string key;
        std::string why;
        SUBCASE("empty") { key = "", why = "empty"; }
        SUBCASE("leading slash") { key = "/etc/passwd", why = "starts with '/'"; }
        SUBCASE("trailing slash") { key = "a/", why = "empty segment"; }
        SUBCASE("double slash") { key = "a//b", why = "empty segment"; }
        SUBCASE("dot") { key = "a/./b", why = "'.' segment"; }
        SUBCASE("lone dot") { key = ".", why = "'.' segment"; }
        SUBCASE("dot dot") { key = "../escape", why = "'..' segment"; }
        SUBCASE("inner dot dot") { key = "a/../../escape", why = "'..' segment"; }
        SUBCASE("NUL") { key = std::string("a\0b", 3), why = "NUL"; }
        CAPTURE(key);
        auto check = [&](const shelbyfs::Error& e) {
            CHECK(e.code == Errc::InvalidArgument);
            CHECK(contains(e.message, dir.file("store")));
            CHECK(contains(e.message, why));
            if (key.find('\0') == std::string::npos) CHECK(contains(e.message, "'" + key + "'"));
            else CHECK(contains(e.message, "'a\\x00b'"));
        };
        auto p = store->put_bytes(key, "x");
        REQUIRE_FALSE(p.ok());
        check(p.error());
        auto f = store->put_file(key, dir.file("src"));
        REQUIRE_FALSE(f.ok());
        check(f.error());
        auto h = store->head(key);
        REQUIRE_FALSE(h.ok());
        check(h.error());
        auto g = store->get(key);
        REQUIRE_FALSE(g.ok());
        check(g.error());
        CHECK(tree(dir.path()) == Names{"src"});  // not even the store directory
    }

    TEST_CASE("list rejects prefixes that are not a key followed by '/'") {
        TempDir dir;
        auto store = open_local(dir.path());
        for (const std::string prefix : {"a", "/", "/a/", "a//", "../", "./", "a/../"}) {
            CAPTURE(prefix);
            auto r = store->list(prefix);
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::InvalidArgument);
            CHECK(contains(r.error().message, "'" + prefix + "'"));
        }
    }

    TEST_CASE("put_file of a missing source leaves no object and no temp file") {
        TempDir dir;
        auto store = open_local(dir.file("store"));
        std::string source;
        SUBCASE("missing") { source = dir.file("no-such-file"); }
        SUBCASE("a directory") { source = dir.path(); }
        SUBCASE("a FIFO with no writer (must not block)") {
            source = dir.file("fifo");
            REQUIRE(::mkfifo(source.c_str(), 0600) == 0);
        }
        CAPTURE(source);
        auto r = store->put_file("objects/x", source);
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Io);
        CHECK(contains(r.error().message, "'objects/x'"));
        CHECK(contains(r.error().message, dir.file("store")));
        CHECK(contains(r.error().message, source));
        CHECK(store->head("objects/x").error().code == Errc::NotFound);
        if (fs::exists(dir.file("store"))) {
            for (const auto& path : tree(dir.file("store"))) {
                CAPTURE(path);
                CHECK(path.back() == '/');  // no file of any name
            }
        }
    }

    TEST_CASE("a put that fails while writing leaves no object and no temp file") {
        TempDir dir;
        auto store = open_local(dir.path());
        write_file(dir.file("src"), pattern(1 << 20));
        REQUIRE(store->put_bytes("keep", "old").ok());
        // A file-size limit makes writes past 64 KiB fail with EFBIG (SIGXFSZ ignored).
        rlimit saved{};
        REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
        const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
        rlimit small = saved;
        small.rlim_cur = 64 << 10;
        REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
        auto bytes = store->put_bytes("a/bytes", pattern(1 << 20));
        auto file = store->put_file("a/file", dir.file("src"));
        auto replace = store->put_bytes("keep", pattern(1 << 20));
        REQUIRE(::setrlimit(RLIMIT_FSIZE, &saved) == 0);
        ::signal(SIGXFSZ, old_handler);

        REQUIRE_FALSE(bytes.ok());
        CHECK(bytes.error().code == Errc::Io);
        CHECK(contains(bytes.error().message, "'a/bytes'"));
        REQUIRE_FALSE(file.ok());
        CHECK(file.error().code == Errc::Io);
        CHECK(contains(file.error().message, "'a/file'"));
        REQUIRE_FALSE(replace.ok());
        CHECK(store->get("keep").value() == "old");  // the old object is intact
        CHECK(tree(dir.path()) == Names{"a/", "keep", "src"});
    }

    TEST_CASE("list shows regular files only, sorted, without temp files or sub-directories") {
        TempDir dir;
        auto store = open_local(dir.path());
        REQUIRE(store->put_bytes("c/zeta", "1").ok());
        REQUIRE(store->put_bytes("c/Alpha", "1").ok());
        REQUIRE(store->put_bytes("c/beta", "1").ok());
        REQUIRE(store->put_bytes("c/sub/deep", "1").ok());
        write_file(dir.file("c/beta.partial-123-456"), "torn");
        fs::create_symlink("beta", dir.file("c/link-to-file"));
        fs::create_symlink("sub", dir.file("c/link-to-dir"));
        auto r = store->list("c/");
        REQUIRE(r.ok());
        CHECK(r.value() == Names{"Alpha", "beta", "link-to-file", "zeta"});
        auto deep = store->list("c/sub/");
        REQUIRE(deep.ok());
        CHECK(deep.value() == Names{"deep"});
    }

    TEST_CASE("list of a missing prefix is empty") {
        TempDir dir;
        auto store = open_local(dir.path());
        REQUIRE(store->put_bytes("file", "x").ok());
        for (const std::string prefix : {"missing/", "missing/deeper/", "file/"}) {
            CAPTURE(prefix);
            auto r = store->list(prefix);
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value().empty());
        }
    }

    TEST_CASE("put under a key whose parent is an object fails and leaves nothing") {
        TempDir dir;
        auto store = open_local(dir.path());
        REQUIRE(store->put_bytes("a", "x").ok());
        auto r = store->put_bytes("a/b", "y");
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::NotDirectory);
        CHECK(contains(r.error().message, "'a/b'"));
        CHECK(tree(dir.path()) == Names{"a"});
    }

    TEST_CASE("concurrent puts of one key all succeed and leave one whole object") {
        TempDir dir;
        auto store = open_local(dir.path());
        const std::string data = pattern(200000);
        std::vector<int> failures(8, 0);
        std::vector<std::thread> threads;
        for (std::size_t t = 0; t < failures.size(); ++t) {
            threads.emplace_back([&, t] {
                for (int i = 0; i < 10; ++i) {
                    if (!store->put_bytes("objects/same", data).ok()) ++failures[t];
                }
            });
        }
        for (auto& th : threads) th.join();
        CHECK(std::count(failures.begin(), failures.end(), 0) == static_cast<long>(failures.size()));
        CHECK(store->get("objects/same").value() == data);
        CHECK(tree(dir.path()) == Names{"objects/", "objects/same"});
    }

    TEST_CASE("a local store's directory is made, with parents, by the first put; paths are absolute") {
        TempDir dir;
        SUBCASE("nested, with a trailing slash") {
            auto store = open_local(dir.file("a/b/c/"));
            CHECK(!fs::exists(dir.file("a")));  // opening (mounting) creates nothing
            auto listed = store->list("index/");
            REQUIRE(listed.ok());
            CHECK(listed.value().empty());
            REQUIRE(store->put_bytes("index/r.json", "{}").ok());
            CHECK(fs::is_directory(dir.file("a/b/c/index")));
            CHECK(store->describe() == dir.file("a/b/c"));
        }
        SUBCASE("relative") {
            const auto cwd = fs::current_path();
            fs::current_path(dir.path());
            auto store = open_object_store("rel/store", nullptr);
            fs::current_path(cwd);
            REQUIRE(store.ok());
            CHECK(store.value()->describe() == dir.file("rel/store"));
            CHECK(store.value()->location("k") == dir.file("rel/store/k"));
        }
    }

    TEST_CASE("open_object_store rejects unusable locations") {
        TempDir dir;
        write_file(dir.file("file"), "x");
        struct Case {
            std::string location;
            Errc code;
        };
        const std::vector<Case> cases = {
            {"", Errc::InvalidArgument},
            {"ftp://host/x", Errc::InvalidArgument},
            {"http://", Errc::InvalidArgument},
            {"http:///path", Errc::InvalidArgument},
            {"http://host/x?q=1", Errc::InvalidArgument},
            {"http://host/x", Errc::InvalidArgument},  // no HttpClient given
            {dir.file("file"), Errc::NotDirectory},
            {dir.file("file/sub"), Errc::NotDirectory},
        };
        for (const auto& c : cases) {
            CAPTURE(c.location);
            auto r = open_object_store(c.location, nullptr);
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == c.code);
            if (!c.location.empty()) CHECK(contains(r.error().message, c.location));
        }
    }
}
