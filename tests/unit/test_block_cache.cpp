// LRU block cache behaviour.
#include <doctest/doctest.h>

#include "shelbyfs/block_cache.h"

using namespace shelbyfs;

namespace {
BlockPtr block(std::size_t size, char fill) { return std::make_shared<const std::string>(size, fill); }
}  // namespace

TEST_SUITE("block_cache") {
    TEST_CASE("returns what was inserted and counts hits and misses") {
        BlockCache cache(1000);
        CHECK(cache.get({0, 0}) == nullptr);
        cache.insert({0, 0}, block(100, 'a'));
        auto b = cache.get({0, 0});
        REQUIRE(b);
        CHECK(*b == std::string(100, 'a'));
        CHECK(cache.get({1, 0}) == nullptr);
        auto s = cache.stats();
        CHECK(s.hits == 1);
        CHECK(s.misses == 2);
        CHECK(s.bytes == 100);
    }

    TEST_CASE("evicts least-recently-used block when over budget") {
        BlockCache cache(300);
        cache.insert({0, 0}, block(100, 'a'));
        cache.insert({0, 1}, block(100, 'b'));
        cache.insert({0, 2}, block(100, 'c'));
        REQUIRE(cache.get({0, 0}));  // 0 becomes most recent; 1 is now the oldest
        cache.insert({0, 3}, block(100, 'd'));
        CHECK(cache.get({0, 1}) == nullptr);
        CHECK(cache.get({0, 0}) != nullptr);
        CHECK(cache.get({0, 2}) != nullptr);
        CHECK(cache.get({0, 3}) != nullptr);
        CHECK(cache.stats().bytes == 300);
        CHECK(cache.stats().evictions == 1);
    }

    TEST_CASE("eviction keeps blocks held by readers alive") {
        BlockCache cache(100);
        cache.insert({0, 0}, block(100, 'a'));
        BlockPtr held = cache.get({0, 0});
        cache.insert({0, 1}, block(100, 'b'));
        CHECK(cache.get({0, 0}) == nullptr);
        CHECK(*held == std::string(100, 'a'));
    }

    TEST_CASE("never caches a block larger than the budget and replaces on reinsert") {
        BlockCache cache(100);
        cache.insert({0, 0}, block(101, 'a'));
        CHECK(cache.get({0, 0}) == nullptr);
        CHECK(cache.stats().bytes == 0);
        cache.insert({0, 1}, block(10, 'a'));
        cache.insert({0, 1}, block(20, 'b'));
        CHECK(*cache.get({0, 1}) == std::string(20, 'b'));
        CHECK(cache.stats().bytes == 20);
        CHECK(cache.stats().blocks == 1);
    }
}
