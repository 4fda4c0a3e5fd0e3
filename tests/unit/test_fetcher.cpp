#include <doctest/doctest.h>
TEST_SUITE("fetcher") {
TEST_CASE("placeholder") { CHECK(true); }
}
