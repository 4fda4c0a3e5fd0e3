#include <doctest/doctest.h>
TEST_SUITE("http_client") {
TEST_CASE("placeholder") { CHECK(true); }
}
