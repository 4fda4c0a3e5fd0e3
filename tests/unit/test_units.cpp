// Size parsing and formatting.
#include <doctest/doctest.h>

#include "shelbyfs/units.h"

using namespace shelbyfs;

TEST_SUITE("units") {
    TEST_CASE("parses plain and suffixed binary sizes") {
        CHECK(parse_size("0") == 0u);
        CHECK(parse_size("4096") == 4096u);
        CHECK(parse_size("1K") == 1024u);
        CHECK(parse_size("1KiB") == 1024u);
        CHECK(parse_size("64MiB") == 64ull << 20);
        CHECK(parse_size("64m") == 64ull << 20);
        CHECK(parse_size("2G") == 2ull << 30);
        CHECK(parse_size("3gib") == 3ull << 30);
        CHECK(parse_size("1T") == 1ull << 40);
        CHECK(parse_size("12B") == 12u);
    }
    TEST_CASE("rejects malformed and overflowing sizes") {
        CHECK_FALSE(parse_size(""));
        CHECK_FALSE(parse_size("K"));
        CHECK_FALSE(parse_size("-1"));
        CHECK_FALSE(parse_size("1.5G"));
        CHECK_FALSE(parse_size("10X"));
        CHECK_FALSE(parse_size("1 MiB"));
        CHECK_FALSE(parse_size("99999999999999999999"));
        CHECK_FALSE(parse_size("17179869184G"));
    }
    TEST_CASE("formats sizes for people") {
        CHECK(format_size(12) == "12 B");
        CHECK(format_size(1536) == "1.5 KiB");
        CHECK(format_size(64ull << 20) == "64.0 MiB");
    }
}
