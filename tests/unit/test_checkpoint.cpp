// Checkpoints over a real LocalStore in a temp dir: publish on close,
// versions, renames, xattrs, a fresh mount's view, failures, spool limits,
// and resuming a dead mount's pending upload. Index record format.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/block_cache.h"
#include "shelbyfs/checkpoint.h"
#include "shelbyfs/fetcher.h"
#include "shelbyfs/object_store.h"

using namespace shelbyfs;
namespace fs = std::filesystem;

namespace {

constexpr InodeNo kRoot = 4;  // what the static tree would give checkpoints/

struct TempDir {
    std::string path;
    TempDir() {
        char pattern[] = "/tmp/shelbyfs-ckpt-XXXXXX";
        REQUIRE(::mkdtemp(pattern) != nullptr);
        path = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// A store that can be told to fail uploads and record writes.
class FlakyStore final : public ObjectStore {
public:
    explicit FlakyStore(std::unique_ptr<ObjectStore> inner) : inner_(std::move(inner)) {}
    bool fail_puts = false;
    std::string describe() const override { return inner_->describe(); }
    std::string location(const std::string& key) const override { return inner_->location(key); }
    Result<void> put_file(const std::string& key, const std::string& path) override {
        if (fail_puts) return make_error(Errc::Network, "store is down (test)");
        return inner_->put_file(key, path);
    }
    Result<void> put_bytes(const std::string& key, const std::string& bytes) override {
        if (fail_puts) return make_error(Errc::Network, "store is down (test)");
        return inner_->put_bytes(key, bytes);
    }
    Result<std::uint64_t> head(const std::string& key) override { return inner_->head(key); }
    Result<std::string> get(const std::string& key) override { return inner_->get(key); }
    Result<std::vector<std::string>> list(const std::string& prefix) override { return inner_->list(prefix); }

private:
    std::unique_ptr<ObjectStore> inner_;
};

// One "mount": store + fetcher + checkpoints, with path-based helpers.
struct Mount {
    FileReader reader;
    BlockCache cache{8 << 20};
    Fetcher fetcher{reader, cache, {}};
    FlakyStore store;
    std::unique_ptr<Checkpoints> ck;

    Mount(const std::string& store_dir, const std::string& spool_dir, std::uint64_t spool_size = 1 << 30)
        : store(open_object_store(store_dir, nullptr).value()) {
        CheckpointOptions o;
        o.spool_dir = spool_dir;
        o.spool_size = spool_size;
        o.block_size = 4096;
        auto c = Checkpoints::open(store, fetcher, o, kRoot);
        REQUIRE_MESSAGE(c, (c ? "" : c.error().message));
        ck = std::move(*c);
    }

    // Inode of a '/'-separated path under checkpoints/ ("" is the root).
    Result<InodeNo> ino(const std::string& path) {
        InodeNo cur = kRoot;
        std::stringstream ss(path);
        std::string part;
        while (std::getline(ss, part, '/')) {
            if (part.empty()) continue;
            auto a = ck->lookup(cur, part);
            if (!a) return std::move(a).error();
            cur = a->st.st_ino;
        }
        return cur;
    }
    std::pair<InodeNo, std::string> split(const std::string& path) {
        auto slash = path.rfind('/');
        if (slash == std::string::npos) return {kRoot, path};
        return {*ino(path.substr(0, slash)), path.substr(slash + 1)};
    }
    // Write a whole file like `cp`: create/truncate, write, close.
    Result<void> save(const std::string& path, const std::string& bytes, std::size_t chunk = 1000) {
        auto [dir, name] = split(path);
        FileHandle fh = 0;
        auto existing = ck->lookup(dir, name);
        if (existing) {
            auto h = ck->open(existing->st.st_ino, O_WRONLY | O_TRUNC);
            if (!h) return std::move(h).error();
            fh = *h;
        } else {
            auto c = ck->create(dir, name, 0644, O_WRONLY | O_CREAT);
            if (!c) return std::move(c).error();
            fh = c->second;
        }
        for (std::size_t off = 0; off < bytes.size(); off += chunk) {
            auto w = ck->write(fh, off, bytes.data() + off, std::min(chunk, bytes.size() - off));
            if (!w) {
                ck->release(fh);
                return std::move(w).error();
            }
        }
        auto f = ck->flush(fh);
        ck->release(fh);
        return f;
    }
    std::string read(const std::string& path) {
        auto i = ino(path);
        REQUIRE_MESSAGE(i, path);
        auto fh = ck->open(*i, O_RDONLY);
        REQUIRE(fh);
        std::string out;
        char buf[3000];
        for (;;) {
            auto n = ck->read(*fh, out.size(), sizeof buf, buf);
            REQUIRE(n);
            if (*n == 0) break;
            out.append(buf, *n);
        }
        ck->release(*fh);
        return out;
    }
    std::vector<std::string> names(const std::string& path) {
        std::vector<std::string> out;
        auto entries = ck->readdir(*ino(path));
        REQUIRE(entries);
        for (const auto& e : *entries)
            if (e.name != "." && e.name != "..") out.push_back(e.name);
        return out;
    }
};

std::string pattern_bytes(std::size_t n, unsigned seed) {
    std::string s(n, '\0');
    std::uint32_t x = seed * 2654435761u + 1;
    for (char& c : s) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        c = static_cast<char>(x);
    }
    return s;
}

std::vector<std::string> store_files(const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir).string());
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace

TEST_SUITE("checkpoint") {
    TEST_CASE("close publishes a content-addressed object and a fresh mount sees the same bytes") {
        TempDir t;
        std::string data = pattern_bytes(10'000, 1);  // 3 blocks of 4096
        {
            Mount m(t.path + "/store", t.path + "/spool");
            REQUIRE(m.save("model.pt", data));
            CHECK(m.read("model.pt") == data);
            auto hash = m.ck->getxattr(*m.ino("model.pt"), kHashXattr);
            REQUIRE(hash);
            CHECK(*hash == ContentHash::of(data).hex());
            CHECK(slurp(t.path + "/store/objects/" + *hash) == data);
        }
        Mount fresh(t.path + "/store", t.path + "/spool-other-machine");
        CHECK(fresh.read("model.pt") == data);
        CHECK(fresh.ck->stats().uploads == 0);
    }

    TEST_CASE("a close by a process that changed nothing publishes nothing; an unknown writer turns that off") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool");
        const CallerId me = static_cast<CallerId>(::gettid());
        const CallerId other = 1;  // init: alive, and another process
        std::string data = pattern_bytes(5000, 9);
        auto c = m.ck->create(kRoot, "w.bin", 0644, O_WRONLY | O_CREAT, me);
        REQUIRE(c);
        REQUIRE(m.ck->write(c->second, 0, data.data(), 2000, me));
        CHECK(m.ck->flush(c->second, other));  // a child's close: succeeds, saves nothing
        CHECK(m.ck->stats().uploads == 0);
        CHECK_FALSE(fs::exists(t.path + "/store/index"));
        REQUIRE(m.ck->write(c->second, 2000, data.data() + 2000, 3000, me));
        REQUIRE(m.ck->flush(c->second, me));  // the writer's close saves all of it
        m.ck->release(c->second);
        CHECK(m.ck->stats().uploads == 1);
        CHECK(m.read("w.bin") == data);

        // O_TRUNC is a change by the opener, even with nothing written after.
        auto tr = m.ck->open(*m.ino("w.bin"), O_WRONLY | O_TRUNC, me);
        REQUIRE(tr);
        REQUIRE(m.ck->flush(*tr, other));
        CHECK(m.read("w.bin").empty());  // this mount shows the open file as it is
        CHECK(m.ck->stats().uploads == 1);  // but saved nothing
        REQUIRE(m.ck->flush(*tr, me));
        m.ck->release(*tr);
        CHECK(m.read("w.bin").empty());

        // A change from an unknown thread (the kernel writing back a shared
        // mapping): every close saves, as before.
        auto h = m.ck->open(*m.ino("w.bin"), O_WRONLY | O_TRUNC, me);
        REQUIRE(h);
        REQUIRE(m.ck->write(*h, 0, "abc", 3, 0));
        REQUIRE(m.ck->flush(*h, other));
        m.ck->release(*h);
        CHECK(m.read("w.bin") == "abc");

        // A changer whose thread has gone (its id may come back in another
        // process): every close saves.
        auto g = m.ck->open(*m.ino("w.bin"), O_WRONLY, me);
        REQUIRE(g);
        std::thread([&] {
            REQUIRE(m.ck->write(*g, 3, "de", 2, static_cast<CallerId>(::gettid())));
        }).join();
        REQUIRE(m.ck->flush(*g, other));
        CHECK(m.read("w.bin") == "abcde");
        // Saved: the exited thread no longer counts, and a child's close of
        // what this thread writes next saves nothing again.
        auto saved = m.ck->stats().uploads;
        REQUIRE(m.ck->write(*g, 5, "f", 1, me));
        REQUIRE(m.ck->flush(*g, other));
        CHECK(m.ck->stats().uploads == saved);
        REQUIRE(m.ck->flush(*g, me));
        m.ck->release(*g);
        CHECK(m.ck->stats().uploads == saved + 1);
        CHECK(m.read("w.bin") == "abcdef");
    }

    TEST_CASE("identical content is stored once; overwrites keep every version; the store never changes") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool");
        std::string a = pattern_bytes(5000, 2), b = pattern_bytes(7000, 3);
        REQUIRE(m.ck->mkdir(kRoot, "run", 0755));
        REQUIRE(m.save("run/ckpt", a));
        auto before = store_files(t.path + "/store");
        std::map<std::string, std::string> contents;
        for (const auto& f : before) contents[f] = slurp(t.path + "/store/" + f);
        REQUIRE(m.save("run/ckpt", b));
        REQUIRE(m.save("run/copy", a));  // same bytes as version 1: no new object
        CHECK(m.read("run/ckpt") == b);
        for (const auto& [f, bytes] : contents) CHECK(slurp(t.path + "/store/" + f) == bytes);
        std::size_t objects = 0;
        for (const auto& f : store_files(t.path + "/store")) objects += f.rfind("objects/", 0) == 0;
        CHECK(objects == 2);
        auto versions = m.names(".versions/run/ckpt");
        REQUIRE(versions.size() == 2);
        CHECK(std::is_sorted(versions.begin(), versions.end()));
        CHECK(m.read(".versions/run/ckpt/" + versions[0]) == a);
        CHECK(m.read(".versions/run/ckpt/" + versions[1]) == b);
        CHECK(versions[1].substr(versions[1].size() - 16) == ContentHash::of(b).hex().substr(0, 16));
        // .versions is read-only.
        CHECK(to_errno(m.ck->open(*m.ino(".versions/run/ckpt/" + versions[0]), O_WRONLY).error().code) == EROFS);
        CHECK(to_errno(m.ck->unlink(*m.ino(".versions/run/ckpt"), versions[0]).error().code) == EROFS);
        CHECK(to_errno(m.ck->mkdir(*m.ino(".versions"), "x", 0755).error().code) == EROFS);
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.names(".versions/run/ckpt") == versions);
        CHECK(fresh.read("run/copy") == a);
    }

    TEST_CASE("write temp, fsync, rename over the final name; unlink; rmdir; survives a remount") {
        TempDir t;
        std::string v1 = pattern_bytes(3000, 4), v2 = pattern_bytes(4000, 5);
        {
            Mount m(t.path + "/store", t.path + "/spool");
            REQUIRE(m.save("latest.pt", v1));
            auto c = m.ck->create(kRoot, "latest.pt.tmp", 0644, O_WRONLY | O_CREAT);
            REQUIRE(c);
            REQUIRE(m.ck->write(c->second, 0, v2.data(), v2.size()));
            REQUIRE(m.ck->fsync(c->second));
            REQUIRE(m.ck->rename(kRoot, "latest.pt.tmp", kRoot, "latest.pt", 0));
            REQUIRE(m.ck->flush(c->second));
            m.ck->release(c->second);
            CHECK(m.read("latest.pt") == v2);
            CHECK(!m.ino("latest.pt.tmp"));
            REQUIRE(m.ck->mkdir(kRoot, "gone", 0755));
            REQUIRE(m.ck->mkdir(kRoot, "kept", 0700));
            REQUIRE(m.save("gone/x", v1));
            CHECK(to_errno(m.ck->rmdir(kRoot, "gone").error().code) == ENOTEMPTY);
            REQUIRE(m.ck->unlink(*m.ino("gone"), "x"));
            REQUIRE(m.ck->rmdir(kRoot, "gone"));
            CHECK(to_errno(m.ck->rename(kRoot, "latest.pt", kRoot, "kept", 0).error().code) == EISDIR);
            CHECK(to_errno(m.ck->rename(kRoot, "latest.pt", kRoot, "latest.pt", RENAME_EXCHANGE).error().code) ==
                  EINVAL);
        }
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.names("") == std::vector<std::string>{".versions", "kept", "latest.pt"});
        CHECK(fresh.read("latest.pt") == v2);
        CHECK((fresh.ck->getattr(*fresh.ino("kept"))->st.st_mode & 07777) == 0700);
        CHECK(fresh.names(".versions/gone/x").size() == 1);  // history outlives the name
    }

    TEST_CASE("renaming a directory moves everything in it, for this mount and the next") {
        TempDir t;
        std::string a = pattern_bytes(100, 6);
        {
            Mount m(t.path + "/store", t.path + "/spool");
            REQUIRE(m.ck->mkdir(kRoot, "d", 0755));
            REQUIRE(m.ck->mkdir(*m.ino("d"), "e", 0755));
            REQUIRE(m.save("d/e/f", a));
            REQUIRE(m.ck->rename(kRoot, "d", kRoot, "moved", 0));
            CHECK(m.read("moved/e/f") == a);
            CHECK(to_errno(m.ck->rename(kRoot, "moved", *m.ino("moved/e"), "x", 0).error().code) == EINVAL);
        }
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.read("moved/e/f") == a);
        CHECK(!fresh.ino("d"));
    }

    TEST_CASE("user xattrs, chmod and utime are recorded with the version and survive a remount") {
        TempDir t;
        {
            Mount m(t.path + "/store", t.path + "/spool");
            REQUIRE(m.save("w.pt", "weights"));
            InodeNo i = *m.ino("w.pt");
            REQUIRE(m.ck->setxattr(i, "user.epoch", "12", 0));
            REQUIRE(m.ck->setxattr(i, "user.loss", std::string("0.25\0x", 6), 0));
            CHECK(to_errno(m.ck->setxattr(i, "user.epoch", "13", XATTR_CREATE).error().code) == EEXIST);
            CHECK(to_errno(m.ck->setxattr(i, "trusted.x", "1", 0).error().code) == ENOTSUP);
            CHECK(to_errno(m.ck->setxattr(i, "user.shelbyfs.hash", "1", 0).error().code) == EPERM);
            SetAttrRequest r;
            r.mode = 0600;
            r.mtime_ns = 1'700'000'000'123'456'789;
            REQUIRE(m.ck->setattr(i, r, 0));
        }
        Mount fresh(t.path + "/store", t.path + "/spool2");
        InodeNo i = *fresh.ino("w.pt");
        CHECK(*fresh.ck->getxattr(i, "user.epoch") == "12");
        CHECK(*fresh.ck->getxattr(i, "user.loss") == std::string("0.25\0x", 6));
        CHECK(*fresh.ck->getxattr(i, kHashXattr) == ContentHash::of("weights").hex());
        auto names = *fresh.ck->listxattr(i);
        CHECK(names == std::vector<std::string>{"user.shelbyfs.hash", "user.epoch", "user.loss"});
        auto a = *fresh.ck->getattr(i);
        CHECK((a.st.st_mode & 07777) == 0600);
        CHECK(a.st.st_mtim.tv_sec == 1'700'000'000);
        CHECK(a.st.st_mtim.tv_nsec == 123'456'789);
        // The version under .versions carries them too.
        auto v = fresh.names(".versions/w.pt");
        REQUIRE(v.size() == 1);
        CHECK(*fresh.ck->getxattr(*fresh.ino(".versions/w.pt/" + v[0]), "user.epoch") == "12");
    }

    TEST_CASE("random-offset writes, truncate and appends give the right bytes and hash") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool");
        std::string want(20'000, 'z');
        auto c = m.ck->create(kRoot, "r", 0644, O_RDWR | O_CREAT);
        REQUIRE(c);
        FileHandle fh = c->second;
        std::string tail = pattern_bytes(5000, 7), head = pattern_bytes(3000, 8);
        REQUIRE(m.ck->write(fh, 15'000, tail.data(), tail.size()));  // a hole first
        REQUIRE(m.ck->write(fh, 0, head.data(), head.size()));
        want = std::string(20'000, '\0');
        want.replace(15'000, 5000, tail);
        want.replace(0, 3000, head);
        SetAttrRequest r;
        r.size = 18'000;
        REQUIRE(m.ck->setattr(c->first.st.st_ino, r, fh));
        want.resize(18'000);
        REQUIRE(m.ck->flush(fh));
        m.ck->release(fh);
        CHECK(m.read("r") == want);
        CHECK(*m.ck->getxattr(*m.ino("r"), kHashXattr) == ContentHash::of(want).hex());
        // truncate(2) without an open file saves at once; an append reopens it.
        r.size = 1000;
        REQUIRE(m.ck->setattr(*m.ino("r"), r, 0));
        want.resize(1000);
        CHECK(*m.ck->getxattr(*m.ino("r"), kHashXattr) == ContentHash::of(want).hex());
        auto h = m.ck->open(*m.ino("r"), O_WRONLY);
        REQUIRE(h);
        REQUIRE(m.ck->write(*h, 1000, "more", 4));
        REQUIRE(m.ck->flush(*h));
        m.ck->release(*h);
        want += "more";
        CHECK(m.read("r") == want);
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.read("r") == want);
        CHECK(fresh.names(".versions/r").size() == 3);
    }

    TEST_CASE("a failed upload fails close with EIO and publishes nothing") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool");
        REQUIRE(m.save("keep", "old"));
        m.store.fail_puts = true;
        auto r = m.save("new", "data that cannot be stored");
        REQUIRE(!r);
        CHECK(to_errno(r.error().code) == EIO);
        CHECK(!m.ino("new"));  // never published: gone after release
        r = m.save("keep", "new data");
        REQUIRE(!r);
        CHECK(m.read("keep") == "old");  // the name still points at the old version
        CHECK(to_errno(m.ck->mkdir(kRoot, "d", 0755).error().code) == EIO);
        CHECK(!m.ino("d"));
        m.store.fail_puts = false;
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.names("") == std::vector<std::string>{".versions", "keep"});
        CHECK(fresh.read("keep") == "old");
    }

    TEST_CASE("a full spool gives ENOSPC to the writer and nothing is published") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool", 64 * 1024);
        std::string big = pattern_bytes(100 * 1024, 9);
        auto r = m.save("big", big, 16 * 1024);
        REQUIRE(!r);
        CHECK(to_errno(r.error().code) == ENOSPC);
        CHECK(!m.ino("big"));
        CHECK(m.ck->stats().spool_used == 0);  // released with the file
        REQUIRE(m.save("small", pattern_bytes(10 * 1024, 10)));
    }

    TEST_CASE("a dead mount's pending upload is resumed by the next mount") {
        TempDir t;
        std::string data = pattern_bytes(9000, 11);
        std::string spool = t.path + "/spool";
        // What a mount killed mid-upload leaves: an unlocked instance with a journal.
        std::string inst = spool + "/inst-1-dead";
        fs::create_directories(inst + "/pending");
        fs::create_directories(inst + "/open");
        { std::ofstream(inst + "/lock"); }
        { std::ofstream(inst + "/pending/7.data", std::ios::binary) << data; }
        { std::ofstream(inst + "/open/3", std::ios::binary) << "never closed"; }
        IndexRecord rec;
        rec.time_ns = 1;
        rec.writer = "00000000deadbeef";
        IndexOp op;
        op.kind = IndexOp::Kind::Put;
        op.path = "resumed.pt";
        op.object.hash = ContentHash::of(data);
        op.object.size = data.size();
        op.object.block_size = 4096;
        for (std::size_t off = 0; off < data.size(); off += 4096)
            op.object.blocks.push_back(ContentHash::of(std::string_view(data).substr(off, 4096)));
        rec.ops.push_back(op);
        { std::ofstream(inst + "/pending/7.json") << rec.to_json(); }
        // A journal whose data does not match its hash is dropped, never published.
        { std::ofstream(inst + "/pending/8.data", std::ios::binary) << "corrupt"; }
        rec.ops[0].path = "corrupt.pt";
        { std::ofstream(inst + "/pending/8.json") << rec.to_json(); }

        Mount m(t.path + "/store", spool);
        CHECK(m.read("resumed.pt") == data);
        CHECK(!m.ino("corrupt.pt"));
        CHECK(!fs::exists(inst));  // emptied and removed
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.read("resumed.pt") == data);
    }

    TEST_CASE("a dead mount's stream notes: only uploads/ keys are deleted, then the directory goes") {
        TempDir t;
        std::string spool = t.path + "/spool";
        std::string inst = spool + "/inst-1-dead";
        for (const char* sub : {"/pending", "/open", "/streams"}) fs::create_directories(inst + sub);
        { std::ofstream(inst + "/lock"); }
        fs::create_directories(t.path + "/store/objects");
        { std::ofstream(t.path + "/store/objects/keep", std::ios::binary) << "stored"; }
        // Damaged notes: never deleted, whatever they name.
        int n = 0;
        for (const char* key : {"objects/keep", "uploads/w-1", "uploads//x", "uploads/../objects/keep",
                                "uploads/0123456789abcdef-1/../../objects/keep", "uploads/0123456789ABCDEF-1",
                                "uploads/0123456789abcdef-"})
            std::ofstream(inst + "/streams/" + std::to_string(++n)) << key;
        { std::ofstream(inst + "/streams/20") << "uploads/0123456789abcdef-7"; }  // a store that cannot delete
        { std::ofstream(inst + "/streams/21"); }  // empty: the mount died writing it
        Mount m(t.path + "/store", spool);
        CHECK(fs::exists(t.path + "/store/objects/keep"));
        CHECK(!fs::exists(inst));
    }

    TEST_CASE("a stream note lives until it is destroyed; a dead mount's notes are listed once claimed") {
        TempDir t;
        std::string dir = t.path + "/spool";
        auto live = Spool::open(dir, 1 << 20, 4096);
        REQUIRE(live);
        auto note = (*live)->note_stream("uploads/w-7");
        REQUIRE(note);
        std::vector<std::string> notes;
        for (const auto& inst : fs::directory_iterator(dir))
            for (const auto& p : fs::directory_iterator(inst.path() / "streams")) notes.push_back(p.path().string());
        REQUIRE(notes.size() == 1);
        note->reset();
        CHECK(!fs::exists(notes[0]));

        // A dead instance: listed by the next spool after claim_orphans, kept until dropped.
        std::string inst = dir + "/inst-9-dead";
        for (const char* sub : {"/pending", "/open", "/streams"}) fs::create_directories(inst + sub);
        { std::ofstream(inst + "/lock"); }
        { std::ofstream(inst + "/streams/4") << "uploads/w-4"; }
        auto next = Spool::open(dir, 1 << 20, 4096);
        REQUIRE(next);
        CHECK((*next)->claim_orphans().empty());
        auto orphans = (*next)->orphan_streams();
        REQUIRE(orphans.size() == 1);
        CHECK(orphans[0].key == "uploads/w-4");
        (*next)->release_orphans();
        CHECK(fs::exists(inst + "/streams/4"));  // not dropped: kept for the next mount
        CHECK((*next)->claim_orphans().empty());
        orphans = (*next)->orphan_streams();
        REQUIRE(orphans.size() == 1);
        (*next)->drop_stream(orphans[0]);
        (*next)->release_orphans();
        CHECK(!fs::exists(inst));

        // A note kept (its object could not be deleted) keeps the spool's
        // directory at exit, for the next spool to claim.
        std::string kept_inst;
        {
            auto keeping = Spool::open(dir, 1 << 20, 4096);
            REQUIRE(keeping);
            auto kept = (*keeping)->note_stream("uploads/0123456789abcdef-9");
            REQUIRE(kept);
            (*kept)->keep();
            kept->reset();
            auto plain = (*keeping)->note_stream("uploads/0123456789abcdef-10");
            REQUIRE(plain);
            for (const auto& inst_dir : fs::directory_iterator(dir))
                if (fs::exists(inst_dir.path() / "streams") && !fs::is_empty(inst_dir.path() / "streams"))
                    kept_inst = inst_dir.path().string();
        }
        REQUIRE(!kept_inst.empty());
        CHECK(fs::exists(kept_inst));
        auto after = Spool::open(dir, 1 << 20, 4096);
        REQUIRE(after);
        CHECK((*after)->claim_orphans().empty());
        orphans = (*after)->orphan_streams();
        REQUIRE(orphans.size() == 1);
        CHECK(orphans[0].key == "uploads/0123456789abcdef-9");
    }

    TEST_CASE("a live mount's spool is not taken over by another") {
        TempDir t;
        Mount a(t.path + "/store", t.path + "/spool");
        auto c = a.ck->create(kRoot, "open", 0644, O_WRONLY | O_CREAT);
        REQUIRE(c);
        REQUIRE(a.ck->write(c->second, 0, "abc", 3));
        Mount b(t.path + "/store", t.path + "/spool");  // same spool dir, both alive
        REQUIRE(a.ck->flush(c->second));
        a.ck->release(c->second);
        CHECK(a.read("open") == "abc");
    }

    TEST_CASE("a resumed upload keeps its place in time: a later unlink wins, a landed record is not repeated") {
        TempDir t;
        std::string spool = t.path + "/spool";
        {
            Mount m(t.path + "/store", t.path + "/spool-a");
            REQUIRE(m.save("f", "v1"));
            REQUIRE(m.ck->unlink(kRoot, "f"));  // recorded now, after the journal below
        }
        std::string data = "v2 that was uploading when the mount died";
        std::string inst = spool + "/inst-2-dead";
        fs::create_directories(inst + "/pending");
        { std::ofstream(inst + "/lock"); }
        { std::ofstream(inst + "/pending/1.data", std::ios::binary) << data; }
        IndexRecord rec;
        rec.time_ns = 1000;  // journaled before the unlink
        rec.writer = "00000000000000aa";
        rec.seq = 1;
        IndexOp op;
        op.kind = IndexOp::Kind::Put;
        op.path = "f";
        op.object.hash = ContentHash::of(data);
        op.object.size = data.size();
        op.object.block_size = 4096;
        op.object.blocks = {ContentHash::of(data)};
        rec.ops = {op};
        { std::ofstream(inst + "/pending/1.json") << rec.to_json(); }
        auto count_index = [&] {
            std::size_t n = 0;
            for (const auto& f : store_files(t.path + "/store")) n += f.rfind("index/", 0) == 0;
            return n;
        };
        std::size_t before = count_index();
        {
            Mount m(t.path + "/store", spool);
            CHECK(!m.ino("f"));  // the unlink recorded after the journal still wins
            CHECK(m.names(".versions/f").size() == 2);
            CHECK(fs::exists(t.path + "/store/" + rec.key()));
        }
        CHECK(count_index() == before + 1);
        // The same journal again (a crash after the record landed): no second record.
        fs::create_directories(inst + "/pending");
        { std::ofstream(inst + "/lock"); }
        { std::ofstream(inst + "/pending/1.data", std::ios::binary) << data; }
        { std::ofstream(inst + "/pending/1.json") << rec.to_json(); }
        { Mount m(t.path + "/store", spool); }
        CHECK(count_index() == before + 1);
    }

    TEST_CASE("a failed write poisons the file: close fails and the saved version stays") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool", 64 * 1024);
        REQUIRE(m.save("model.pt", "good"));
        auto r = m.save("model.pt", pattern_bytes(100 * 1024, 12), 16 * 1024);
        REQUIRE(!r);
        CHECK(to_errno(r.error().code) == ENOSPC);
        CHECK(m.read("model.pt") == "good");
        CHECK(*m.ck->getxattr(*m.ino("model.pt"), kHashXattr) == ContentHash::of("good").hex());
        // Writing the big file in one go, then closing: the close reports the failure too.
        auto h = m.ck->open(*m.ino("model.pt"), O_WRONLY | O_TRUNC);
        REQUIRE(h);
        std::string big = pattern_bytes(100 * 1024, 13);
        CHECK(!m.ck->write(*h, 0, big.data(), big.size()));
        CHECK(to_errno(m.ck->flush(*h).error().code) == EIO);
        m.ck->release(*h);
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.read("model.pt") == "good");
    }

    TEST_CASE("empty files are saved at close; fsync on any descriptor saves; truncate(path) is recorded") {
        TempDir t;
        {
            Mount m(t.path + "/store", t.path + "/spool");
            auto c = m.ck->create(kRoot, "empty", 0644, O_WRONLY | O_CREAT);
            REQUIRE(c);
            REQUIRE(m.ck->flush(c->second));  // close() returns only once it is stored
            CHECK(m.ck->getxattr(c->first.st.st_ino, kHashXattr));
            m.ck->release(c->second);
            // A writer keeps a file open; another process fsyncs it read-only, then truncates by path.
            auto w = m.ck->create(kRoot, "shared", 0644, O_RDWR | O_CREAT);
            REQUIRE(w);
            REQUIRE(m.ck->write(w->second, 0, "new-content", 11));
            auto ro = m.ck->open(w->first.st.st_ino, O_RDONLY);
            REQUIRE(ro);
            REQUIRE(m.ck->fsync(*ro));
            CHECK(*m.ck->getxattr(w->first.st.st_ino, kHashXattr) == ContentHash::of("new-content").hex());
            SetAttrRequest r;
            r.size = 3;
            REQUIRE(m.ck->setattr(w->first.st.st_ino, r, 0));
            CHECK(*m.ck->getxattr(w->first.st.st_ino, kHashXattr) == ContentHash::of("new").hex());
            SetAttrRequest chmod;
            chmod.mode = 0600;
            REQUIRE(m.ck->setattr(w->first.st.st_ino, chmod, 0));
            m.ck->release(*ro);
            m.ck->release(w->second);  // the writer never closes cleanly: no flush
        }
        Mount fresh(t.path + "/store", t.path + "/spool2");
        CHECK(fresh.read("empty").empty());
        CHECK(fresh.read("shared") == "new");
        CHECK((fresh.ck->getattr(*fresh.ino("shared"))->st.st_mode & 07777) == 0600);
    }

    TEST_CASE(".versions cannot be replaced or created by users") {
        TempDir t;
        Mount m(t.path + "/store", t.path + "/spool");
        REQUIRE(m.ck->mkdir(kRoot, "d", 0755));
        CHECK(to_errno(m.ck->rename(kRoot, "d", kRoot, ".versions", 0).error().code) == EROFS);
        CHECK(to_errno(m.ck->mkdir(kRoot, ".versions", 0755).error().code) == EEXIST);
        CHECK(to_errno(m.ck->rename(kRoot, ".versions", kRoot, "x", 0).error().code) == EROFS);
    }

    TEST_CASE("index records: round trip, keys sort by time, damage is named") {
        IndexRecord r;
        r.time_ns = 1'700'000'000'000'000'001;
        r.writer = "0123456789abcdef";
        r.seq = 42;
        IndexOp op;
        op.kind = IndexOp::Kind::Put;
        op.path = "runs/a b+c=%/é.pt";
        op.object.hash = ContentHash::of("x");
        op.object.size = 1;
        op.object.block_size = 4096;
        op.object.blocks = {ContentHash::of("x")};
        op.xattrs["user.bin"] = std::string("\0\xff", 2);
        r.ops = {op, IndexOp{IndexOp::Kind::Unlink, "old", {}, 0, 0, {}}};
        auto back = IndexRecord::parse(r.to_json(), "rec");
        REQUIRE_MESSAGE(back, (back ? "" : back.error().message));
        CHECK(back->ops.size() == 2);
        CHECK(back->ops[0].path == op.path);
        CHECK(back->ops[0].xattrs.at("user.bin") == std::string("\0\xff", 2));
        CHECK(back->ops[1].kind == IndexOp::Kind::Unlink);
        CHECK(r.key() == "index/01700000000000000001-0123456789abcdef-00000042.json");
        IndexRecord later = r;
        later.time_ns += 1;
        later.seq = 1;
        CHECK(r.key() < later.key());
        CHECK(version_name(1'700'000'000'000'000'001, op.object.hash).rfind("20231114T221320.000000Z-", 0) == 0);

        auto bad = IndexRecord::parse("{\"format\":\"shelbyfs-checkpoint-index\",\"version\":1}", "index/x.json");
        REQUIRE(!bad);
        CHECK(bad.error().message.find("index/x.json") != std::string::npos);
        std::string evil = r.to_json();
        evil.replace(evil.find("runs/"), 5, "../..");
        auto bad_path = IndexRecord::parse(evil, "index/y.json");
        REQUIRE(!bad_path);
        CHECK(bad_path.error().message.find("invalid path") != std::string::npos);
        CHECK(!IndexRecord::parse("{not json", "z"));
    }
}
