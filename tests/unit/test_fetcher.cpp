// Fetcher: verification, refetch, single-flight, error propagation, sequential prefetch.
#include <doctest/doctest.h>

#include <dirent.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <random>
#include <thread>

#include "fake_reader.h"
#include "shelbyfs/fetcher.h"

using namespace shelbyfs;

namespace {

struct Fixture {
    test::FakeReader reader;
    std::string bytes = test::pattern(10'000, 7);
    std::vector<ObjectSpec> objects() {
        reader.objects["obj"] = bytes;
        ObjectSpec o{"shard-000000.tar", "obj", bytes.size(), 4096, {}};
        for (std::size_t off = 0; off < bytes.size(); off += 4096)
            o.blocks.push_back(ContentHash::of(std::string_view(bytes).substr(off, 4096)));
        return {o};
    }
};

std::string read_all(Fetcher& f, std::uint64_t offset, std::size_t size) {
    std::string out(size, '\0');
    auto n = f.read(0, offset, out.data(), size);
    REQUIRE(n);
    out.resize(*n);
    return out;
}

FetcherOptions no_prefetch() {
    FetcherOptions o;
    o.prefetch_blocks = 0;
    return o;
}

// An object of kBlocks blocks of kBlock bytes, for prefetch tests.
constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kBlocks = 64;

struct Striped {
    test::FakeReader reader;
    std::string bytes = test::pattern(kBlock * kBlocks, 11);
    std::vector<ObjectSpec> objects() {
        reader.objects["obj"] = bytes;
        ObjectSpec o{"shard-000000.tar", "obj", bytes.size(), kBlock, {}};
        for (std::size_t off = 0; off < bytes.size(); off += kBlock)
            o.blocks.push_back(ContentHash::of(std::string_view(bytes).substr(off, kBlock)));
        return {o};
    }
    std::string block(std::uint64_t i) const { return bytes.substr(i * kBlock, kBlock); }
    // Put verified blocks in the cache, as an earlier read would have.
    void warm(BlockCache& cache, std::uint64_t from, std::uint64_t to) const {
        for (std::uint64_t i = from; i < to; ++i) cache.insert({0, i}, std::make_shared<const std::string>(block(i)));
    }
};

// Read block `i` whole and check its bytes.
void read_block(Fetcher& f, const Striped& fx, std::uint64_t i) {
    CHECK(read_all(f, i * kBlock, kBlock) == fx.block(i));
}

std::int64_t highest_block(const test::FakeReader& r) {
    std::int64_t off = r.highest_offset();
    return off < 0 ? -1 : off / static_cast<std::int64_t>(kBlock);
}

std::size_t thread_count() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/task")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') ++n;
        ::closedir(d);
    }
    return n;
}

// The thread count once it settles at `expected` (a joined thread can stay
// listed in /proc for a moment after pthread_join returns), or after 2 s.
std::size_t settled_thread_count(std::size_t expected) {
    std::size_t n = thread_count();
    for (int spin = 0; spin < 2000 && n != expected; ++spin) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        n = thread_count();
    }
    return n;
}

FetcherOptions prefetch(std::uint32_t blocks) {
    FetcherOptions o;
    o.prefetch_blocks = blocks;
    return o;
}

// Striped's whole object queued in order at its first read, for one worker.
FetcherOptions whole_object_one_worker() {
    FetcherOptions o = prefetch(16);
    o.whole_object_blocks = kBlocks;
    o.prefetch_threads = 1;
    o.prefetch_budget_bytes = kBlock * kBlocks;
    return o;
}

// `n` objects of `blocks` blocks (the later ones a little shorter), for
// tests with several objects.
struct Objects {
    test::FakeReader reader;
    std::vector<std::string> bytes;
    std::vector<ObjectSpec> specs;
    Objects(std::uint64_t n, std::uint64_t blocks) {
        for (std::uint64_t i = 0; i < n; ++i) {
            std::string b = test::pattern(kBlock * blocks - (i % 3) * 100, 20 + static_cast<unsigned>(i));
            std::string location = "obj" + std::to_string(i);
            reader.objects[location] = b;
            ObjectSpec o{"s" + std::to_string(i), location, b.size(), kBlock, {}};
            for (std::size_t off = 0; off < b.size(); off += kBlock)
                o.blocks.push_back(ContentHash::of(std::string_view(b).substr(off, kBlock)));
            bytes.push_back(std::move(b));
            specs.push_back(std::move(o));
        }
    }
    // Read `length` bytes of `object` at `offset` through `f`; true if they are right.
    bool read(Fetcher& f, std::uint32_t object, std::uint64_t offset, std::size_t length) const {
        std::string out(length, '\0');
        auto n = f.read(object, offset, out.data(), length);
        if (!n) return false;
        out.resize(*n);
        return out == bytes[object % bytes.size()].substr(offset, length);
    }
};

// Wait (at most 10 s) until reads have promoted `n` queued prefetches.
bool wait_promoted(Fetcher& f, std::uint64_t n) {
    for (int i = 0; i < 2000 && f.stats().promoted < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return f.stats().promoted == n;
}

}  // namespace

TEST_SUITE("fetcher") {
    TEST_CASE("reads exact bytes at any offset, across blocks and at the end") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        CHECK(read_all(f, 0, 10) == fx.bytes.substr(0, 10));
        CHECK(read_all(f, 4090, 20) == fx.bytes.substr(4090, 20));
        CHECK(read_all(f, 1, 9998) == fx.bytes.substr(1, 9998));
        CHECK(read_all(f, 9990, 100) == fx.bytes.substr(9990));
        CHECK(read_all(f, 10'000, 10).empty());
        CHECK(read_all(f, 50'000, 10).empty());
        CHECK(fx.reader.requests() == 3);  // each of the 3 blocks fetched once, then cached
    }

    TEST_CASE("read_slices points into the cached blocks instead of copying them") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        auto slices = f.read_slices(0, 4090, 5000);  // the end of block 0, all of block 1, the start of block 2
        REQUIRE(slices);
        REQUIRE(slices->size() == 3);
        std::string joined(slices_size(*slices), '\0');
        CHECK(copy_slices(*slices, joined.data()) == 5000);
        CHECK(joined == fx.bytes.substr(4090, 5000));
        for (std::size_t i = 0; i < 3; ++i) {
            BlockPtr cached = cache.get({0, i});
            REQUIRE(cached);
            CHECK((*slices)[i].owner == cached);
            CHECK((*slices)[i].data >= cached->data());
            CHECK((*slices)[i].data + (*slices)[i].size <= cached->data() + cached->size());
        }
        CHECK((*slices)[0].size == 6);
        CHECK((*slices)[1].size == 4096);
        CHECK((*slices)[2].size == 5000 - 6 - 4096);
        auto past_end = f.read_slices(0, 10'000, 10);
        REQUIRE(past_end);
        CHECK(past_end->empty());
    }

    TEST_CASE("cached_slices serves only what the memory cache holds: no request, hits but no misses counted") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), no_prefetch());
        CHECK_FALSE(f.cached_slices(0, 0, 10));
        CHECK(fx.reader.requests() == 0);
        CHECK(cache.stats().misses == 0);
        REQUIRE(read_all(f, 0, 10) == fx.bytes.substr(0, 10));  // block 0 only
        auto hits = cache.stats().hits;
        auto misses = cache.stats().misses;
        auto one = f.cached_slices(0, 100, 50);
        REQUIRE(one);
        std::string joined(slices_size(*one), '\0');
        copy_slices(*one, joined.data());
        CHECK(joined == fx.bytes.substr(100, 50));
        CHECK(cache.stats().hits == hits + 1);
        CHECK_FALSE(f.cached_slices(0, 4000, 6000));  // blocks 1 and 2 are missing
        CHECK(cache.stats().hits == hits + 1);        // and block 0 is not counted for it
        CHECK(cache.stats().misses == misses);
        REQUIRE(read_all(f, 4096, 5904).size() == 5904);
        auto across = f.cached_slices(0, 4000, 7000);  // blocks 0 to 2, clamped at the end
        REQUIRE(across);
        joined.assign(slices_size(*across), '\0');
        copy_slices(*across, joined.data());
        CHECK(joined == fx.bytes.substr(4000));
        CHECK_FALSE(f.cached_slices(0, 10'000, 10));  // past the end
        CHECK_FALSE(f.cached_slices(7, 0, 10));       // no such object
        CHECK(fx.reader.requests() == 3);             // the reads' three blocks, nothing more
    }

    TEST_CASE("cached_slices is nullopt while one of the blocks is missing") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), no_prefetch());
        REQUIRE(read_all(f, 0, 10).size() == 10);
        CHECK(f.cached_slices(0, 0, 4096));
        CHECK_FALSE(f.cached_slices(0, 4000, 200));  // block 1 never read
        REQUIRE(read_all(f, 4096, 10).size() == 10);
        auto both = f.cached_slices(0, 4000, 200);
        REQUIRE(both);
        CHECK(both->size() == 2);
        CHECK(fx.reader.requests() == 2);
    }

    TEST_CASE("refetches a corrupted block and returns verified bytes") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        fx.reader.corrupt_next = 2;
        CHECK(read_all(f, 100, 100) == fx.bytes.substr(100, 100));
        CHECK(fx.reader.requests() == 3);
        CHECK(f.stats().integrity_failures == 2);
    }

    TEST_CASE("persistent corruption gives an Integrity error naming shard and range, nothing cached") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        fx.reader.corrupt_next = 100;
        std::string buf(10, '\0');
        auto r = f.read(0, 4096, buf.data(), buf.size());
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::Integrity);
        CHECK(r.error().message.find("shard-000000.tar bytes 4096-8191: hash mismatch") != std::string::npos);
        CHECK(fx.reader.requests() == 3);
        CHECK(cache.stats().blocks == 0);
        fx.reader.corrupt_next = 0;  // the store heals: the next read succeeds
        CHECK(read_all(f, 4096, 10) == fx.bytes.substr(4096, 10));
    }

    TEST_CASE("reader errors propagate and are not cached") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        fx.reader.fail_with = make_error(Errc::Network, "connection refused");
        std::string buf(10, '\0');
        auto r = f.read(0, 0, buf.data(), buf.size());
        REQUIRE_FALSE(r);
        CHECK(r.error().code == Errc::Network);
        fx.reader.fail_with.reset();
        CHECK(read_all(f, 0, 10) == fx.bytes.substr(0, 10));
    }

    TEST_CASE("concurrent misses on one block share one request") {
        Fixture fx;
        BlockCache cache(1 << 20);
        // Eight reads in one block are a sequential stream: keep prefetch out of the count.
        Fetcher f(fx.reader, cache, fx.objects(), no_prefetch());
        fx.reader.hold();
        constexpr int kThreads = 8;
        std::atomic<int> ok{0};
        std::vector<std::thread> threads;
        for (int i = 0; i < kThreads; ++i)
            threads.emplace_back([&, i] {
                std::string buf(100, '\0');
                auto r = f.read(0, static_cast<std::uint64_t>(i) * 100, buf.data(), buf.size());
                if (r && *r == 100 && buf == fx.bytes.substr(static_cast<std::size_t>(i) * 100, 100)) ++ok;
            });
        // Wait (bounded) until the 7 followers have joined the leader's fetch.
        for (int spin = 0; spin < 5000 && f.stats().joined < kThreads - 1; ++spin)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        CHECK(f.stats().joined == kThreads - 1);
        fx.reader.release();
        for (auto& t : threads) t.join();
        CHECK(ok == kThreads);
        CHECK(fx.reader.requests() == 1);
    }

    TEST_CASE("a missing object is an I/O error (EIO), not ENOENT") {
        Fixture fx;
        BlockCache cache(1 << 20);
        auto objects = fx.objects();
        objects[0].location = "gone";
        Fetcher f(fx.reader, cache, objects);
        std::string buf(10, '\0');
        auto r = f.read(0, 0, buf.data(), buf.size());
        REQUIRE_FALSE(r);
        CHECK(to_errno(r.error().code) == EIO);
        CHECK(r.error().message.find("gone: 404") != std::string::npos);
    }

    TEST_CASE("an exception while starting a fetch leaves no reader waiting for ever") {
        Fixture fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects());
        fx.reader.throw_next = 1;
        std::string buf(10, '\0');
        CHECK_THROWS_AS((void)f.read(0, 0, buf.data(), buf.size()), std::bad_alloc);
        // The block is not stuck in flight: the next read fetches it afresh.
        CHECK(read_all(f, 0, 10) == fx.bytes.substr(0, 10));
        CHECK(f.stats().joined == 0);
    }

    TEST_CASE("a tiny cache still serves correct bytes") {
        Fixture fx;
        BlockCache cache(4096);  // one block
        Fetcher f(fx.reader, cache, fx.objects());
        for (int round = 0; round < 3; ++round)
            for (std::uint64_t off = 0; off < 10'000; off += 1000) CHECK(read_all(f, off, 1500) == fx.bytes.substr(off, 1500));
        CHECK(cache.stats().bytes <= 4096);
    }

    TEST_CASE("a sequential read prefetches ahead: later blocks come without demand requests") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(8));
        for (std::uint64_t i = 0; i < kBlocks; ++i) read_block(f, fx, i);
        f.wait_prefetch_idle();
        auto s = f.stats();
        // Blocks 0-2 prove the stream; from block 3 on every block was
        // registered as a prefetch before its read asked for it.
        CHECK(s.fetches == 3);
        CHECK(s.prefetched == kBlocks - 3);
        CHECK(s.prefetch_hits == kBlocks - 3);
        CHECK(s.prefetch_failures == 0);
        CHECK(fx.reader.requests() == static_cast<int>(kBlocks));  // each block exactly once
        for (std::uint64_t i = 0; i < kBlocks; ++i) CHECK(fx.reader.requests_at(i * kBlock) == 1);
    }

    TEST_CASE("small reads within a block are one stream too (the kernel's 128 KiB reads of a 1 MiB block)") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(8));
        for (std::uint64_t off = 0; off < 3 * 1024; off += 1024) CHECK(read_all(f, off, 1024) == fx.bytes.substr(off, 1024));
        f.wait_prefetch_idle();
        CHECK(highest_block(fx.reader) == 2);  // window 2 after the third read
        CHECK(f.stats().prefetched == 2);
    }

    TEST_CASE("the window starts at 2, doubles per block advanced and stops at prefetch_blocks") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(8));
        // After reading block i: the highest block requested (block + window).
        const std::int64_t expected[] = {0, 1, 2 + 2, 3 + 4, 4 + 8, 5 + 8, 6 + 8, 7 + 8, 8 + 8};
        for (std::uint64_t i = 0; i < std::size(expected); ++i) {
            CAPTURE(i);
            read_block(f, fx, i);
            f.wait_prefetch_idle();
            CHECK(highest_block(fx.reader) == expected[i]);
        }
        SUBCASE("a larger cap lets it grow further") {
            Striped fy;
            BlockCache cache2(1 << 20);
            Fetcher g(fy.reader, cache2, fy.objects(), prefetch(32));
            for (std::uint64_t i = 0; i <= 6; ++i) {
                read_block(g, fy, i);
                g.wait_prefetch_idle();
            }
            CHECK(highest_block(fy.reader) == 6 + 32);
        }
    }

    TEST_CASE("per object, no more than the window is in flight, whatever the number of streams") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(8));
        // Reads hit warm blocks and every prefetch is held, so the only
        // thing that limits prefetch below is the per-object cap.
        fx.warm(cache, 0, 6);
        fx.warm(cache, 32, 38);
        fx.reader.hold();
        for (std::uint64_t i = 0; i < 6; ++i) read_block(f, fx, i);    // stream A: 6,7 then 8..13
        for (std::uint64_t i = 32; i < 38; ++i) read_block(f, fx, i);  // stream B: finds no room
        CHECK(f.stats().prefetched == 8);
        CHECK(fx.reader.wait_held(8));
        CHECK(fx.reader.held() == 8);
        CHECK(fx.reader.requests_at(38 * kBlock) == 0);
        fx.reader.release();
        f.wait_prefetch_idle();
        // With room again, stream B's next read fills its window.
        read_block(f, fx, 38);
        f.wait_prefetch_idle();
        CHECK(highest_block(fx.reader) == 38 + 8);
    }

    TEST_CASE("prefetched-but-unread bytes stay within the budget, and prefetch evicts no unread block") {
        Striped fx;
        BlockCache cache(16 * kBlock);  // budget/4: four blocks may be prefetched and unread
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(16));
        fx.warm(cache, 0, 6);
        fx.reader.hold();
        for (std::uint64_t i = 0; i < 6; ++i) read_block(f, fx, i);
        CHECK(f.stats().prefetched == 4);
        CHECK(fx.reader.wait_held(4));
        fx.reader.release();
        f.wait_prefetch_idle();
        // The rest of the object streams through the small cache; every
        // prefetched block is still cached when its read comes.
        for (std::uint64_t i = 6; i < kBlocks; ++i) read_block(f, fx, i);
        f.wait_prefetch_idle();
        auto s = f.stats();
        CHECK(s.prefetched > 30);
        CHECK(s.prefetch_hits == s.prefetched);
        CHECK(cache.stats().bytes <= 16 * kBlock);
        SUBCASE("an explicit budget below one block turns prefetch off") {
            Striped fy;
            BlockCache cache2(1 << 20);
            FetcherOptions o = prefetch(16);
            o.prefetch_budget_bytes = kBlock - 1;
            Fetcher g(fy.reader, cache2, fy.objects(), o);
            for (std::uint64_t i = 0; i < 10; ++i) read_block(g, fy, i);
            CHECK(g.stats().prefetched == 0);
        }
    }

    TEST_CASE("random reads start no prefetch; after them a sequential run starts again at 2") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(16));
        // Strides of 7 blocks, wrapping: no read lands next to a recent one.
        int reads = 0;
        for (std::uint64_t k = 0; k < 40; ++k, ++reads) read_block(f, fx, (k * 7) % kBlocks);
        f.wait_prefetch_idle();
        CHECK(f.stats().prefetched == 0);
        CHECK(fx.reader.requests() == reads);  // one request per (distinct) block read
        SUBCASE("a ramped stream is forgotten once random reads push it out") {
            Striped fy;
            BlockCache cache2(1 << 20);
            Fetcher g(fy.reader, cache2, fy.objects(), prefetch(16));
            for (std::uint64_t i = 0; i < 6; ++i) read_block(g, fy, i);  // window 16
            g.wait_prefetch_idle();
            for (std::uint64_t i : {30, 50, 26, 44, 57, 34, 47, 53, 61}) read_block(g, fy, i);
            g.wait_prefetch_idle();
            auto before = g.stats().prefetched;
            for (std::uint64_t i : {40, 41}) read_block(g, fy, i);
            g.wait_prefetch_idle();
            CHECK(g.stats().prefetched == before);  // two reads are not yet a stream
            read_block(g, fy, 42);
            g.wait_prefetch_idle();
            CHECK(g.stats().prefetched == before + 1);  // window 2: 43 and 44, of which 44 was cached
            CHECK(fy.reader.requests_at(43 * kBlock) == 1);
            CHECK(fy.reader.requests_at(45 * kBlock) == 0);
        }
    }

    TEST_CASE("a prefetched block that fails verification is not cached; a read fetches it again") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(2));
        SUBCASE("the store heals: the read gets verified bytes") {
            fx.reader.corrupt_at[3 * kBlock] = 3;  // every attempt of the prefetch
            for (std::uint64_t i = 0; i < 3; ++i) read_block(f, fx, i);
            f.wait_prefetch_idle();
            CHECK(f.stats().prefetch_failures == 1);
            CHECK(f.stats().integrity_failures == 3);
            CHECK(cache.get({0, 3}) == nullptr);
            CHECK(cache.get({0, 4}) != nullptr);
            read_block(f, fx, 3);
            CHECK(fx.reader.requests_at(3 * kBlock) == 4);
        }
        SUBCASE("the corruption persists: the read gets an Integrity error (EIO)") {
            fx.reader.corrupt_at[3 * kBlock] = 100;
            for (std::uint64_t i = 0; i < 3; ++i) read_block(f, fx, i);
            f.wait_prefetch_idle();
            std::string buf(kBlock, '\0');
            auto r = f.read(0, 3 * kBlock, buf.data(), buf.size());
            REQUIRE_FALSE(r);
            CHECK(to_errno(r.error().code) == EIO);
            CHECK(cache.get({0, 3}) == nullptr);
        }
    }

    TEST_CASE("a read returns as soon as its own blocks are ready, and one joining a prefetch gets its bytes") {
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), prefetch(2));
        fx.reader.hold_if([](std::uint64_t offset) { return offset >= 3 * kBlock; });
        for (std::uint64_t i = 0; i < 3; ++i) read_block(f, fx, i);  // returns with 3 and 4 held
        REQUIRE(fx.reader.wait_held(2));
        std::optional<std::string> got;
        std::thread reader([&] {
            std::string buf(kBlock, '\0');
            auto r = f.read(0, 3 * kBlock, buf.data(), buf.size());
            if (r && *r == kBlock) got = buf;
        });
        for (int spin = 0; spin < 5000 && f.stats().joined < 1; ++spin)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        CHECK(f.stats().joined == 1);
        SUBCASE("the prefetch succeeds") {
            fx.reader.release();
            reader.join();
            CHECK(fx.reader.requests_at(3 * kBlock) == 1);
            f.wait_prefetch_idle();
            CHECK(f.stats().prefetch_hits >= 1);
        }
        SUBCASE("the prefetch fails: the joiner fetches on demand, and sees no error") {
            fx.reader.fail_held(make_error(Errc::Network, "connection reset (test)"));
            reader.join();
            CHECK(fx.reader.requests_at(3 * kBlock) == 2);
            f.wait_prefetch_idle();
            CHECK(f.stats().prefetch_failures >= 1);
        }
        REQUIRE(got);
        CHECK(*got == fx.block(3));
    }

    TEST_CASE("destruction with prefetches in flight and queued neither hangs nor leaks threads") {
        std::size_t threads_before = thread_count();
        Striped fx;
        {
            BlockCache cache(1 << 20);
            FetcherOptions o = prefetch(16);
            o.prefetch_threads = 2;  // most of the window waits in the queue
            Fetcher f(fx.reader, cache, fx.objects(), o);
            fx.warm(cache, 0, 6);
            fx.reader.hold();
            for (std::uint64_t i = 0; i < 6; ++i) read_block(f, fx, i);
            CHECK(f.stats().prefetched > 2);
            REQUIRE(fx.reader.wait_held(2));
        }  // ~Fetcher abandons the 2 held requests and fails the queued ones
        CHECK(settled_thread_count(threads_before) == threads_before);
        fx.reader.release();  // answers nobody waits for any more
    }

    TEST_CASE("a small object is fetched whole at its first read; a large one is not") {
        // 3 blocks: the first (random) read of block 1 brings blocks 0 and 2 along.
        Fixture small;
        BlockCache cache(1 << 20);
        FetcherOptions o = prefetch(16);
        o.whole_object_blocks = 3;
        Fetcher f(small.reader, cache, small.objects(), o);
        CHECK(read_all(f, 5000, 10) == small.bytes.substr(5000, 10));
        f.wait_prefetch_idle();
        CHECK(f.stats().fetches == 1);
        CHECK(f.stats().prefetched == 2);
        CHECK(small.reader.requests() == 3);
        // Everything is cached now: reads anywhere send nothing.
        CHECK(read_all(f, 0, 10'000) == small.bytes);
        CHECK(read_all(f, 9000, 1000) == small.bytes.substr(9000));
        CHECK(small.reader.requests() == 3);

        // 64 blocks, above the limit: a random read fetches its block only.
        Striped large;
        BlockCache cache2(1 << 20);
        Fetcher g(large.reader, cache2, large.objects(), o);
        read_block(g, large, 40);
        g.wait_prefetch_idle();
        CHECK(g.stats().prefetched == 0);
        CHECK(large.reader.requests() == 1);
    }

    TEST_CASE("a read that needs a block still queued for prefetch moves it to the front") {
        // One worker, the whole object queued in order: the worker is stuck on
        // block 0 (held). A read of block 50 joins its queued prefetch and must
        // be served next, not after blocks 1..49 (which are held too: without
        // the promotion the read cannot finish).
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), whole_object_one_worker());
        fx.reader.hold_if([](std::uint64_t offset) { return offset != 50 * kBlock; });
        auto first = std::async(std::launch::async, [&] { return read_all(f, 10 * kBlock, kBlock); });
        REQUIRE(fx.reader.wait_held(2));  // block 10 (demand) and block 0 (the worker's)
        auto wanted = std::async(std::launch::async, [&] { return read_all(f, 50 * kBlock, kBlock); });
        CHECK(wait_promoted(f, 1));
        fx.reader.answer_held();  // the worker is free: block 50 is next
        bool served = wanted.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
        CHECK(served);
        CHECK(fx.reader.requests_at(50 * kBlock) == 1);
        CHECK(fx.reader.requests_at(25 * kBlock) == 0);
        fx.reader.release();
        CHECK(first.get() == fx.block(10));
        CHECK(wanted.get() == fx.block(50));
        f.wait_prefetch_idle();
        CHECK(f.stats().prefetched == kBlocks - 1);
        CHECK(fx.reader.requests() == static_cast<int>(kBlocks));
    }

    TEST_CASE("promoted prefetches run in the order reads asked for them") {
        // One worker, stuck on block 1; reads want block 40, then block 50:
        // the worker must take 40 first, then 50, then go on in order.
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), whole_object_one_worker());
        fx.reader.hold();
        auto r0 = std::async(std::launch::async, [&] { return read_all(f, 0, kBlock); });
        REQUIRE(fx.reader.wait_held(2));  // block 0 (demand), block 1 (the worker's)
        auto r40 = std::async(std::launch::async, [&] { return read_all(f, 40 * kBlock, kBlock); });
        REQUIRE(wait_promoted(f, 1));
        auto r50 = std::async(std::launch::async, [&] { return read_all(f, 50 * kBlock, kBlock); });
        REQUIRE(wait_promoted(f, 2));
        fx.reader.answer_held();
        REQUIRE(fx.reader.wait_held(1));
        CHECK(fx.reader.requests_at(40 * kBlock) == 1);
        CHECK(fx.reader.requests_at(50 * kBlock) == 0);
        fx.reader.answer_held();
        REQUIRE(fx.reader.wait_held(1));
        CHECK(fx.reader.requests_at(50 * kBlock) == 1);
        CHECK(fx.reader.requests_at(2 * kBlock) == 0);
        fx.reader.answer_held();
        REQUIRE(fx.reader.wait_held(1));
        CHECK(fx.reader.requests_at(2 * kBlock) == 1);  // then the queue in order
        fx.reader.release();
        CHECK(r0.get() == fx.block(0));
        CHECK(r40.get() == fx.block(40));
        CHECK(r50.get() == fx.block(50));
        f.wait_prefetch_idle();
        CHECK(fx.reader.requests() == static_cast<int>(kBlocks));
    }

    TEST_CASE("a whole-object prefetch cut short by the budget goes on as reads free it") {
        Striped fx;
        BlockCache cache(1 << 20);
        FetcherOptions o = prefetch(16);
        o.whole_object_blocks = kBlocks;
        o.prefetch_budget_bytes = 16 * kBlock;
        Fetcher f(fx.reader, cache, fx.objects(), o);
        read_block(f, fx, 0);  // queues blocks 1..16: the budget is full
        f.wait_prefetch_idle();
        CHECK(fx.reader.requests() == 17);
        // For prefetch, bytes handed out by cached_slices (to the kernel's
        // page cache) are read as well.
        bool cached_only = false;
        SUBCASE("read") {}
        SUBCASE("handed out by cached_slices") { cached_only = true; }
        // Read the prefetched blocks, never two neighbours in a row (no
        // sequential stream): each read frees a block of budget, and the
        // whole-object prefetch queues the next block of the object.
        for (std::uint64_t i : {16, 14, 12, 10, 8, 6, 4, 2, 15, 13, 11, 9, 7, 5, 3, 1}) {
            if (!cached_only) {
                read_block(f, fx, i);
                continue;
            }
            auto s = f.cached_slices(0, i * kBlock, kBlock);
            REQUIRE(s);
            std::string joined(slices_size(*s), '\0');
            copy_slices(*s, joined.data());
            CHECK(joined == fx.block(i));
        }
        f.wait_prefetch_idle();
        CHECK(fx.reader.requests() == 33);
        CHECK(fx.reader.requests_at(32 * kBlock) == 1);
        CHECK(fx.reader.requests_at(33 * kBlock) == 0);
        CHECK(f.stats().prefetch_hits == 16);
        CHECK(f.stats().fetches == 1);
    }

    TEST_CASE("stress: random and sequential readers of whole-object prefetched shards, small budget") {
        // Six objects of 48 blocks, a reader that answers after 0-1.5 ms, 12
        // threads reading at random or in order, a budget of 20 blocks,
        // 1..6 workers, and a cache that evicts in every other round: every
        // byte must be right and, once idle, the bookkeeping balanced.
        constexpr std::uint64_t kObjects = 6, kObjectBlocks = 48;
        for (int round = 0; round < 6; ++round) {
            Objects fx(kObjects, kObjectBlocks);
            const std::vector<std::string>& bytes = fx.bytes;
            test::DelayedReader slow(fx.reader, std::chrono::microseconds(1500));
            BlockCache cache(round % 2 ? 30 * kBlock : 1 << 24);
            FetcherOptions o = prefetch(8);
            o.whole_object_blocks = kObjectBlocks;
            o.prefetch_threads = 1 + static_cast<unsigned>(round);
            o.prefetch_budget_bytes = 20 * kBlock;
            o.dataset_fits_cache = round % 3 == 2;  // fitting or not, the bookkeeping must balance
            Fetcher f(slow, cache, fx.specs, o);
            std::atomic<int> bad{0};
            std::vector<std::thread> threads;
            for (int t = 0; t < 12; ++t)
                threads.emplace_back([&, t] {
                    std::mt19937 rng(static_cast<unsigned>(100 * round + t));
                    std::uint64_t in_order = 0;
                    for (int i = 0; i < 300; ++i) {
                        auto object = static_cast<std::uint32_t>(rng() % kObjects);
                        std::uint64_t size = bytes[object].size();
                        std::uint64_t offset = t % 3 == 0 ? (in_order += 3000) % size : rng() % size;
                        std::size_t length = 1 + rng() % (3 * kBlock);
                        std::string out(length, '\0');
                        auto n = f.read(object, offset, out.data(), length);
                        if (!n) {
                            ++bad;
                            continue;
                        }
                        out.resize(*n);
                        if (out != bytes[object].substr(offset, length)) ++bad;
                    }
                });
            for (auto& t : threads) t.join();
            f.wait_prefetch_idle();
            CHECK(bad == 0);
            CHECK(f.audit() == "");
        }
    }

    TEST_CASE("dataset_fits_cache: dataset objects up to the budget come whole and hold no budget once cached") {
        // Two dataset objects of 16 blocks, a budget of 16 blocks, the general
        // limit at 8 blocks. Fitting: both come whole at their first read
        // (the first one's cached blocks, never read, hold no budget). Not
        // fitting: neither does. An object added later follows the general
        // rules either way.
        for (bool fits : {true, false}) {
            Objects fx(3, 16);
            std::vector<ObjectSpec> dataset(fx.specs.begin(), fx.specs.begin() + 2);
            BlockCache cache(1 << 20);
            FetcherOptions o = prefetch(16);
            o.whole_object_blocks = 8;
            o.prefetch_budget_bytes = 16 * kBlock;
            o.dataset_fits_cache = fits;
            Fetcher f(fx.reader, cache, dataset, o);
            CHECK(fx.read(f, 0, 5 * kBlock, 10));
            f.wait_prefetch_idle();
            CHECK(fx.read(f, 1, 5 * kBlock, 10));
            f.wait_prefetch_idle();
            CHECK(fx.reader.requests() == (fits ? 32 : 2));
            std::uint32_t added = f.add_object(fx.specs[2]);
            CHECK(fx.read(f, added, 5 * kBlock, 10));
            f.wait_prefetch_idle();
            CHECK(fx.reader.requests() == (fits ? 33 : 3));
            CHECK(f.audit() == "");
        }
    }

    TEST_CASE("a prefetched block evicted before anyone read it can be prefetched again") {
        // A whole object prefetched into a cache of 24 blocks: most of it is
        // evicted unread. A sequential read through the evicted part must
        // still be prefetched ahead of (a handful of demand fetches while the
        // stream proves itself), not fetched block by block on demand.
        Striped fx;
        BlockCache cache(24 * kBlock);
        FetcherOptions o = prefetch(8);
        o.whole_object_blocks = kBlocks;
        o.prefetch_budget_bytes = kBlocks * kBlock;
        Fetcher f(fx.reader, cache, fx.objects(), o);
        read_block(f, fx, 0);
        f.wait_prefetch_idle();
        CHECK(fx.reader.requests() == static_cast<int>(kBlocks));
        for (std::uint64_t i = 4; i < 36; ++i) read_block(f, fx, i);
        f.wait_prefetch_idle();
        // Block 0, then blocks 4..6 while the stream proves itself; a slow
        // machine may add a few. Without prefetch it would be 33.
        CHECK(f.stats().fetches <= 12);
        CHECK(f.audit() == "");
    }

    TEST_CASE("prefetch_blocks = 0 turns prefetch off") {
        std::size_t threads_before = thread_count();
        Striped fx;
        BlockCache cache(1 << 20);
        Fetcher f(fx.reader, cache, fx.objects(), no_prefetch());
        for (std::uint64_t i = 0; i < kBlocks; ++i) read_block(f, fx, i);
        f.wait_prefetch_idle();
        CHECK(f.stats().prefetched == 0);
        CHECK(f.stats().fetches == kBlocks);
        CHECK(fx.reader.requests() == static_cast<int>(kBlocks));
        CHECK(thread_count() == threads_before);  // no worker was started
    }
}
