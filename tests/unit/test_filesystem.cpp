// Filesystem core: tree shape, attributes, reads, read-only errors. No FUSE.
#include <doctest/doctest.h>

#include <fcntl.h>

#include "fake_reader.h"
#include "shelbyfs/filesystem.h"

using namespace shelbyfs;

namespace {

struct Fixture {
    test::FakeReader reader;
    Manifest manifest;
    BlockCache cache{1 << 20};
    std::unique_ptr<Fetcher> fetcher;
    std::unique_ptr<Filesystem> fs;

    Fixture() {
        reader.objects["s0"] = test::pattern(5000, 1);
        reader.objects["s1"] = test::pattern(64, 2);
        manifest.block_size = 1024;
        manifest.shards = {ShardInfo{"shard-000000.tar", "s0", 0, {}, {}},
                           ShardInfo{"shard-000001.tar", "s1", 0, {}, {}}};
        manifest.samples = {SampleInfo{"b/2.png", 0, 1000, 3000, {}}, SampleInfo{"a/1.png", 0, 0, 10, {}},
                            SampleInfo{"a/deep/x", 1, 0, 64, {}}, SampleInfo{"empty", 1, 64, 0, {}}};
        test::seal(manifest, reader);
        REQUIRE(manifest.validate("t"));
        std::vector<ObjectSpec> objects;
        for (auto& s : manifest.shards)
            objects.push_back(ObjectSpec{s.name, s.location, s.size, manifest.block_size, s.blocks});
        fetcher = std::make_unique<Fetcher>(reader, cache, objects);
        auto r = Filesystem::create(manifest, *fetcher, FsOptions{60, 1000, 1000, 1234});
        REQUIRE(r);
        fs = std::move(*r);
    }

    InodeNo walk(std::initializer_list<const char*> parts) {
        InodeNo ino = kRootIno;
        for (const char* p : parts) {
            auto a = fs->lookup(ino, p);
            REQUIRE_MESSAGE(a, p);
            ino = a->st.st_ino;
        }
        return ino;
    }

    std::vector<std::string> names(InodeNo dir) {
        auto r = fs->readdir(dir);
        REQUIRE(r);
        std::vector<std::string> out;
        for (auto& e : *r) out.push_back(e.name);
        return out;
    }
};

}  // namespace

TEST_SUITE("filesystem") {
    TEST_CASE("root holds samples, shards and checkpoints") {
        Fixture fx;
        CHECK(fx.names(kRootIno) == std::vector<std::string>{".", "..", "checkpoints", "samples", "shards"});
        CHECK(fx.names(fx.walk({"shards"})) == std::vector<std::string>{".", "..", "shard-000000.tar", "shard-000001.tar"});
        CHECK(fx.names(fx.walk({"samples"})) == std::vector<std::string>{".", "..", "a", "b", "empty"});
        CHECK(fx.names(fx.walk({"samples", "a"})) == std::vector<std::string>{".", "..", "1.png", "deep"});
        CHECK(fx.names(fx.walk({"checkpoints"})) == std::vector<std::string>{".", ".."});
    }

    TEST_CASE("attributes carry exact sizes, modes and owner") {
        Fixture fx;
        auto a = fx.fs->getattr(fx.walk({"samples", "b", "2.png"}));
        REQUIRE(a);
        CHECK(a->st.st_size == 3000);
        CHECK(a->st.st_mode == (S_IFREG | 0444));
        CHECK(a->st.st_uid == 1000);
        CHECK(a->st.st_mtim.tv_sec == 1234);
        CHECK(a->ttl == 60);
        auto shard = fx.fs->getattr(fx.walk({"shards", "shard-000000.tar"}));
        CHECK(shard->st.st_size == 5000);
        auto dir = fx.fs->getattr(fx.walk({"samples", "a"}));
        CHECK(S_ISDIR(dir->st.st_mode));
        CHECK(dir->st.st_nlink == 3);
        CHECK(fx.fs->getattr(fx.walk({"samples", "empty"}))->st.st_size == 0);
    }

    TEST_CASE("lookup misses and type errors") {
        Fixture fx;
        auto r = fx.fs->lookup(fx.walk({"samples"}), "nope");
        REQUIRE_FALSE(r);
        CHECK(to_errno(r.error().code) == ENOENT);
        CHECK(to_errno(fx.fs->lookup(fx.walk({"samples", "a", "1.png"}), "x").error().code) == ENOTDIR);
        CHECK(to_errno(fx.fs->open(fx.walk({"samples"}), O_RDONLY).error().code) == EISDIR);
    }

    TEST_CASE("reads sample and shard bytes exactly, clamped at EOF") {
        Fixture fx;
        const std::string& s0 = fx.reader.objects["s0"];
        InodeNo sample = fx.walk({"samples", "b", "2.png"});
        std::string buf(5000, '\0');
        auto n = fx.fs->read(sample, 0, buf.size(), buf.data());
        REQUIRE(n);
        CHECK(*n == 3000);
        CHECK(buf.substr(0, 3000) == s0.substr(1000, 3000));
        n = fx.fs->read(sample, 2990, 100, buf.data());
        CHECK(*n == 10);
        CHECK(buf.substr(0, 10) == s0.substr(3990, 10));
        CHECK(*fx.fs->read(sample, 3000, 100, buf.data()) == 0);
        InodeNo shard = fx.walk({"shards", "shard-000000.tar"});
        n = fx.fs->read(shard, 0, 5000, buf.data());
        CHECK(*n == 5000);
        CHECK(buf == s0);
    }

    TEST_CASE("open pushes a cached sample's bytes once, and only while no other handle is open") {
        Fixture fx;
        const std::string& s0 = fx.reader.objects["s0"];
        InodeNo two = fx.walk({"samples", "b", "2.png"});  // bytes 1000..4000 of s0: blocks 0 to 3
        InodeNo one = fx.walk({"samples", "a", "1.png"});  // bytes 0..10 of s0: block 0
        std::vector<std::string> pushed;
        Filesystem::Push push = [&](const ReadSlices& s) {
            std::string joined(slices_size(s), '\0');
            copy_slices(s, joined.data());
            pushed.push_back(joined);
        };
        REQUIRE(fx.fs->open(two, O_RDONLY, push));  // nothing cached: no push, and nothing fetched
        CHECK(pushed.empty());
        CHECK(fx.reader.requests() == 0);
        std::string all(3000, '\0');
        REQUIRE(fx.fs->read(two, 0, 3000, all.data()));  // caches blocks 0 to 3
        REQUIRE(fx.fs->open(two, O_RDONLY, push));        // the first handle is still open
        CHECK(pushed.empty());
        fx.fs->release(two, 0);
        fx.fs->release(two, 0);
        REQUIRE(fx.fs->open(two, O_RDONLY, push));
        REQUIRE(pushed.size() == 1);
        CHECK(pushed[0] == s0.substr(1000, 3000));  // joined from four blocks
        fx.fs->release(two, 0);
        REQUIRE(fx.fs->open(two, O_RDONLY, push));  // pushed before: not again
        CHECK(pushed.size() == 1);
        fx.fs->release(two, 0);
        REQUIRE(fx.fs->open(one, O_RDONLY, push));  // block 0 is cached already
        REQUIRE(pushed.size() == 2);
        CHECK(pushed[1] == s0.substr(0, 10));
        int requests = fx.reader.requests();
        std::string buf(10, '\0');
        InodeNo shard = fx.walk({"shards", "shard-000000.tar"});
        REQUIRE(fx.fs->read(shard, 0, 10, buf.data()));
        REQUIRE(fx.fs->open(shard, O_RDONLY, push));
        REQUIRE(fx.fs->open(fx.walk({"samples", "empty"}), O_RDONLY, push));
        CHECK_FALSE(fx.fs->open(fx.walk({"samples", "a"}), O_RDONLY, push));
        CHECK(pushed.size() == 2);  // no shard, empty file or directory
        CHECK(fx.reader.requests() == requests);
    }

    TEST_CASE("inode numbers agree between readdir, lookup and the parent links") {
        Fixture fx;
        std::vector<InodeNo> dirs{kRootIno};
        std::size_t seen = 0;
        while (!dirs.empty()) {
            InodeNo dir = dirs.back();
            dirs.pop_back();
            auto entries = fx.fs->readdir(dir);
            REQUIRE(entries);
            for (std::size_t i = 2; i < entries->size(); ++i) {
                const DirEntry& e = (*entries)[i];
                auto a = fx.fs->lookup(dir, e.name);
                REQUIRE_MESSAGE(a, e.name);
                CHECK(a->st.st_ino == e.ino);
                CHECK((a->st.st_mode & S_IFMT) == e.type);
                if (e.type == S_IFDIR && e.ino != fx.fs->checkpoints_ino()) {
                    CHECK((*fx.fs->readdir(e.ino))[1].ino == dir);
                    dirs.push_back(e.ino);
                }
                ++seen;
            }
        }
        CHECK(seen + 1 == fx.fs->inode_count());
        CHECK(fx.walk({"checkpoints"}) == fx.fs->checkpoints_ino());
        CHECK((*fx.fs->readdir(kRootIno))[1].ino == kRootIno);
        CHECK(to_errno(fx.fs->lookup(kRootIno, "").error().code) == ENOENT);
        CHECK(to_errno(fx.fs->lookup(fx.walk({"samples", "a"}), "deeper").error().code) == ENOENT);
        CHECK(fx.fs->statfs().f_files == 13);  // 4 fixed dirs, 2 shards, 3 dirs and 4 samples
    }

    TEST_CASE("everything is read-only for now") {
        Fixture fx;
        CHECK(to_errno(fx.fs->open(fx.walk({"samples", "a", "1.png"}), O_WRONLY).error().code) == EROFS);
        CHECK(to_errno(fx.fs->open(fx.walk({"samples", "a", "1.png"}), O_RDONLY | O_TRUNC).error().code) == EROFS);
        CHECK(to_errno(fx.fs->modify(fx.walk({"samples"})).error().code) == EROFS);
        CHECK(fx.fs->open(fx.walk({"samples", "a", "1.png"}), O_RDONLY));
    }
}
