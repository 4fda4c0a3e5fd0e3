#include <doctest/doctest.h>
TEST_SUITE("pack") {
TEST_CASE("placeholder") { CHECK(true); }
}
