// XXH3-128 hex form and streaming.
#include <doctest/doctest.h>

#include <string>

#include "shelbyfs/hash.h"

using namespace shelbyfs;

TEST_SUITE("hash") {
    TEST_CASE("hex matches xxhsum -H2 for known input") {
        // `echo hi | xxhsum -H2` prints f4d0497cf9394caab34d1a3ab2bece70
        CHECK(ContentHash::of(std::string("hi\n")).hex() == "f4d0497cf9394caab34d1a3ab2bece70");
        // `printf '' | xxhsum -H2`
        CHECK(ContentHash::of(std::string()).hex() == "99aa06d3014798d86001c324468d497f");
    }
    TEST_CASE("hex round-trips and rejects malformed text") {
        auto h = ContentHash::of(std::string("shelbyfs"));
        auto parsed = ContentHash::from_hex(h.hex());
        REQUIRE(parsed);
        CHECK(*parsed == h);
        CHECK(ContentHash::from_hex("F4D0497CF9394CAAB34D1A3AB2BECE70") ==
              ContentHash::from_hex("f4d0497cf9394caab34d1a3ab2bece70"));
        CHECK_FALSE(ContentHash::from_hex("f4d0497cf9394caab34d1a3ab2bece7"));
        CHECK_FALSE(ContentHash::from_hex("g4d0497cf9394caab34d1a3ab2bece70"));
        CHECK_FALSE(ContentHash::from_hex(""));
    }
    TEST_CASE("streaming digest equals one-shot digest") {
        std::string data(100000, '\0');
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
        Hasher h;
        h.update(data.data(), 1);
        h.update(data.data() + 1, 4999);
        h.update(data.data() + 5000, data.size() - 5000);
        CHECK(h.digest() == ContentHash::of(data));
        h.reset();
        CHECK(h.digest() == ContentHash::of(std::string()));
    }
}
