#include <doctest/doctest.h>
TEST_SUITE("units") {
TEST_CASE("placeholder") { CHECK(true); }
}
