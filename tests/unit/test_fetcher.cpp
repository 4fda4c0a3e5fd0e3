// Fetcher: verification, refetch, single-flight, error propagation.
#include <doctest/doctest.h>

#include <atomic>
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
        Fetcher f(fx.reader, cache, fx.objects());
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
}
