// DiskCache: verified lookups, corruption handling, quota eviction, temp files, and Fetcher integration.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fake_reader.h"
#include "shelbyfs/disk_cache.h"
#include "shelbyfs/fetcher.h"

using namespace shelbyfs;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "shelbyfs-disk-cache-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string block_path(const fs::path& dir, const ContentHash& h) {
    std::string hex = h.hex();
    return (dir / hex.substr(0, 2) / hex).string();
}

// Block files (32 hex digits) under `dir`.
std::size_t count_blocks(const fs::path& dir) {
    std::size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file() && e.path().filename().string().size() == 32) ++n;
    return n;
}

std::size_t count_temps(const fs::path& dir) {
    std::size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(dir))
        if (e.path().filename().string().rfind(".tmp-", 0) == 0) ++n;
    return n;
}

void set_mtime(const std::string& path, std::time_t when) {
    timespec times[2] = {{when, 0}, {when, 0}};
    REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kBlocks = 16;

struct Object {
    test::FakeReader reader;
    std::string bytes = test::pattern(kBlock * kBlocks - 100, 3);  // a short last block
    std::vector<ObjectSpec> objects() {
        reader.objects["obj"] = bytes;
        ObjectSpec o{"shard-000000.tar", "obj", bytes.size(), kBlock, {}};
        for (std::size_t off = 0; off < bytes.size(); off += kBlock)
            o.blocks.push_back(ContentHash::of(std::string_view(bytes).substr(off, kBlock)));
        return {o};
    }
};

FetcherOptions with_disk(DiskCache& disk, std::uint32_t prefetch = 0) {
    FetcherOptions o;
    o.prefetch_blocks = prefetch;
    o.disk_cache = &disk;
    return o;
}

std::string read_all(Fetcher& f, std::size_t size) {
    std::string out(size, '\0');
    std::size_t done = 0;
    while (done < size) {
        auto n = f.read(0, done, out.data() + done, std::min<std::size_t>(size - done, 3000));
        REQUIRE(n);
        if (*n == 0) break;
        done += *n;
    }
    out.resize(done);
    return out;
}

}  // namespace

TEST_SUITE("disk_cache") {

TEST_CASE("a stored block is found, verified and named by its hash") {
    TempDir dir;
    DiskCache disk(dir.path.string(), 1 << 20);
    disk.wait_scanned();
    std::string bytes = test::pattern(5000, 1);
    ContentHash h = ContentHash::of(bytes);
    CHECK_FALSE(disk.lookup(h, bytes.size()));
    disk.insert(h, bytes);
    CHECK(fs::exists(block_path(dir.path, h)));
    auto got = disk.lookup(h, bytes.size());
    REQUIRE(got);
    CHECK(*got == bytes);
    auto s = disk.stats();
    CHECK(s.hits == 1);
    CHECK(s.misses == 1);
    CHECK(s.inserts == 1);
    CHECK(s.bytes == bytes.size());
    CHECK(count_temps(dir.path) == 0);
}

TEST_CASE("a file with the wrong bytes or length is deleted and is a miss") {
    TempDir dir;
    DiskCache disk(dir.path.string(), 1 << 20);
    std::string bytes = test::pattern(5000, 2);
    ContentHash h = ContentHash::of(bytes);
    disk.insert(h, bytes);
    std::string path = block_path(dir.path, h);
    SUBCASE("flipped byte") {
        std::string bad = bytes;
        bad[100] = static_cast<char>(bad[100] ^ 1);
        std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
        CHECK_FALSE(disk.lookup(h, bytes.size()));
    }
    SUBCASE("truncated") {
        fs::resize_file(path, 1000);
        CHECK_FALSE(disk.lookup(h, bytes.size()));
    }
    CHECK_FALSE(fs::exists(path));
    CHECK(disk.stats().verify_failures == 1);
    CHECK(disk.stats().bytes == 0);
}

TEST_CASE("quota evicts the oldest files first, counting files found at start-up") {
    TempDir dir;
    std::vector<std::string> blocks;
    std::vector<ContentHash> hashes;
    for (unsigned i = 0; i < 6; ++i) {
        blocks.push_back(test::pattern(1000, 10 + i));
        hashes.push_back(ContentHash::of(blocks.back()));
    }
    {
        DiskCache first(dir.path.string(), 1 << 20);
        for (unsigned i = 0; i < 4; ++i) first.insert(hashes[i], blocks[i]);
    }
    // Block 2 is the oldest on disk, then 0, 3, 1.
    std::time_t now = std::time(nullptr);
    set_mtime(block_path(dir.path, hashes[2]), now - 400);
    set_mtime(block_path(dir.path, hashes[0]), now - 300);
    set_mtime(block_path(dir.path, hashes[3]), now - 200);
    set_mtime(block_path(dir.path, hashes[1]), now - 100);

    DiskCache disk(dir.path.string(), 4000);
    disk.wait_scanned();
    CHECK(disk.stats().bytes == 4000);
    disk.insert(hashes[4], blocks[4]);
    CHECK_FALSE(fs::exists(block_path(dir.path, hashes[2])));
    CHECK(fs::exists(block_path(dir.path, hashes[0])));
    // A hit makes block 0 the most recently used, so 3 goes next.
    CHECK(disk.lookup(hashes[0], 1000));
    disk.insert(hashes[5], blocks[5]);
    CHECK_FALSE(fs::exists(block_path(dir.path, hashes[3])));
    CHECK(fs::exists(block_path(dir.path, hashes[0])));
    CHECK(fs::exists(block_path(dir.path, hashes[1])));
    CHECK(count_blocks(dir.path) == 4);
    CHECK(disk.stats().evictions == 2);
    CHECK(disk.stats().bytes == 4000);
}

TEST_CASE("a file another mount deleted is a miss and is stored again") {
    TempDir dir;
    DiskCache disk(dir.path.string(), 1 << 20);
    disk.wait_scanned();  // else the start-up scan may list the file before it goes
    std::string bytes = test::pattern(3000, 4);
    ContentHash h = ContentHash::of(bytes);
    disk.insert(h, bytes);
    fs::remove(block_path(dir.path, h));
    CHECK_FALSE(disk.lookup(h, bytes.size()));
    CHECK(disk.stats().bytes == 0);
    disk.insert(h, bytes);
    CHECK(disk.lookup(h, bytes.size()));
}

TEST_CASE("an index entry whose file another mount deleted does not stop a new insert") {
    // What a start-up scan that listed the file just before it went leaves behind.
    TempDir dir;
    DiskCache disk(dir.path.string(), 1 << 20);
    disk.wait_scanned();
    std::string bytes = test::pattern(3000, 6);
    ContentHash h = ContentHash::of(bytes);
    disk.insert(h, bytes);
    fs::remove(block_path(dir.path, h));
    disk.insert(h, bytes);  // no lookup in between: the entry is still indexed
    CHECK(fs::exists(block_path(dir.path, h)));
    CHECK(disk.stats().bytes == 3000);
    CHECK(disk.lookup(h, bytes.size()));
}

TEST_CASE("temporary files are never taken for blocks, and stale ones are removed") {
    TempDir dir;
    std::string bytes = test::pattern(2000, 5);
    ContentHash h = ContentHash::of(bytes);
    std::string hex = h.hex();
    fs::create_directories(dir.path / hex.substr(0, 2));
    std::string fresh = (dir.path / hex.substr(0, 2) / ".tmp-1-0").string();
    std::string stale = (dir.path / hex.substr(0, 2) / ".tmp-1-1").string();
    std::ofstream(fresh, std::ios::binary) << bytes;
    std::ofstream(stale, std::ios::binary) << bytes;
    set_mtime(stale, std::time(nullptr) - 2 * 3600);
    DiskCache disk(dir.path.string(), 1 << 20);
    disk.wait_scanned();
    CHECK(disk.stats().bytes == 0);
    CHECK_FALSE(disk.lookup(h, bytes.size()));
    CHECK(fs::exists(fresh));  // may belong to a live writer
    CHECK_FALSE(fs::exists(stale));
}

TEST_CASE("a second Fetcher over the same directory reads nothing from the network") {
    TempDir dir;
    Object obj;
    auto specs = obj.objects();
    SUBCASE("demand") {
        {
            DiskCache disk(dir.path.string(), 1 << 20);
            BlockCache cache(1 << 20);
            Fetcher f(obj.reader, cache, specs, with_disk(disk));
            CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
            CHECK(disk.stats().inserts == kBlocks);
        }
        CHECK(obj.reader.requests() == static_cast<int>(kBlocks));
        DiskCache disk(dir.path.string(), 1 << 20);
        BlockCache cache(1 << 20);
        test::FakeReader empty;  // any request would fail
        Fetcher f(empty, cache, specs, with_disk(disk));
        CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
        CHECK(empty.requests() == 0);
        CHECK(f.stats().fetches == 0);
        CHECK(f.stats().bytes_fetched == 0);
        CHECK(disk.stats().hits == kBlocks);
        // Now in memory: reading again does not touch the disk cache.
        CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
        CHECK(disk.stats().hits == kBlocks);
    }
    SUBCASE("prefetch") {
        {
            DiskCache disk(dir.path.string(), 1 << 20);
            BlockCache cache(1 << 20);
            Fetcher f(obj.reader, cache, specs, with_disk(disk, 8));
            CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
            f.wait_prefetch_idle();
        }
        DiskCache disk(dir.path.string(), 1 << 20);
        BlockCache cache(1 << 20);
        test::FakeReader empty;
        Fetcher f(empty, cache, specs, with_disk(disk, 8));
        CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
        f.wait_prefetch_idle();
        CHECK(empty.requests() == 0);
        CHECK(f.stats().prefetch_failures == 0);
        CHECK(f.stats().prefetched > 0);
    }
}

TEST_CASE("a corrupted cache file is detected, deleted and fetched again") {
    TempDir dir;
    Object obj;
    auto specs = obj.objects();
    {
        DiskCache disk(dir.path.string(), 1 << 20);
        BlockCache cache(1 << 20);
        Fetcher f(obj.reader, cache, specs, with_disk(disk));
        CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
    }
    std::string path = block_path(dir.path, specs[0].blocks[3]);
    {
        std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
        file.seekp(10);
        file.put('\x7f');
    }
    DiskCache disk(dir.path.string(), 1 << 20);
    BlockCache cache(1 << 20);
    test::FakeReader reader;
    reader.objects = obj.reader.objects;
    Fetcher f(reader, cache, specs, with_disk(disk));
    CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
    CHECK(reader.requests() == 1);
    CHECK(reader.requests_at(3 * kBlock) == 1);
    CHECK(disk.stats().verify_failures == 1);
    CHECK(disk.stats().inserts == 1);
    // Stored again, whole.
    CHECK(fs::file_size(path) == kBlock);
}

TEST_CASE("a bad network block is never written to the disk cache") {
    TempDir dir;
    Object obj;
    auto specs = obj.objects();
    obj.reader.corrupt_next = 1;
    DiskCache disk(dir.path.string(), 1 << 20);
    BlockCache cache(1 << 20);
    Fetcher f(obj.reader, cache, specs, with_disk(disk));
    CHECK(read_all(f, kBlock) == obj.bytes.substr(0, kBlock));
    CHECK(f.stats().integrity_failures == 1);
    CHECK(disk.stats().inserts == 1);
    auto got = disk.lookup(specs[0].blocks[0], kBlock);
    REQUIRE(got);
    CHECK(*got == obj.bytes.substr(0, kBlock));
}

TEST_CASE("an unusable directory leaves reads correct, without a disk cache") {
    TempDir dir;
    std::ofstream(dir.path / "file") << "not a directory";
    Object obj;
    auto specs = obj.objects();
    DiskCache disk((dir.path / "file" / "cache").string(), 1 << 20);
    CHECK_FALSE(disk.is_enabled());
    disk.wait_scanned();
    BlockCache cache(1 << 20);
    Fetcher f(obj.reader, cache, specs, with_disk(disk));
    CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
    CHECK(disk.stats().inserts == 0);
    CHECK(obj.reader.requests() == static_cast<int>(kBlocks));
}

TEST_CASE("a directory that becomes unwritable degrades to no disk cache") {
    TempDir dir;
    Object obj;
    auto specs = obj.objects();
    fs::path cache_dir = dir.path / "dc";
    DiskCache disk(cache_dir.string(), 1 << 20);
    REQUIRE(disk.is_enabled());
    disk.wait_scanned();
    // Replace the directory by a file: every mkdir and create now fails
    // (with ENOTDIR or EEXIST, whoever runs the test, root included).
    fs::remove_all(cache_dir);
    std::ofstream(cache_dir) << "x";
    BlockCache cache(1 << 20);
    Fetcher f(obj.reader, cache, specs, with_disk(disk));
    CHECK(read_all(f, obj.bytes.size()) == obj.bytes);
    CHECK(disk.stats().inserts == 0);
    CHECK(disk.stats().bytes == 0);
}

}  // TEST_SUITE
