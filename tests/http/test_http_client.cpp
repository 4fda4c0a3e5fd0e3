// HttpClient against the in-process loopback TestServer: ranges, retries, faults.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shelbyfs/http_client.h"
#include "test_server.h"

using namespace std::chrono_literals;
using shelbyfs::Errc;
using shelbyfs::HttpClient;
using shelbyfs::HttpOptions;
using shelbyfs::Result;
using shelbyfs::test::Fault;
using shelbyfs::test::TempDir;
using shelbyfs::test::TestServer;

namespace {

using Clock = std::chrono::steady_clock;

using shelbyfs::test::fast_options;
using shelbyfs::test::pattern;

// Waits, bounded, for a future; a timeout fails the test instead of hanging it.
template <typename T>
Result<T> wait(std::future<Result<T>> f, std::chrono::milliseconds limit = 5000ms) {
    if (f.wait_for(limit) != std::future_status::ready) {
        FAIL("request did not complete within " << limit.count() << " ms");
    }
    return f.get();
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

std::shared_ptr<const std::string> shared(std::string s) { return std::make_shared<const std::string>(std::move(s)); }

}  // namespace

TEST_SUITE("http_client") {
    TEST_CASE("range read returns exactly the requested bytes") {
        TestServer server;
        const std::string data = pattern(1000);
        server.put("/obj", data);
        HttpClient client(fast_options());
        const std::vector<std::pair<std::uint64_t, std::uint64_t>> cases = {
            {0, 1}, {0, 1000}, {999, 1}, {500, 123}, {1, 998}, {998, 2}};
        for (const auto& range : cases) {
            const std::uint64_t offset = range.first;
            const std::uint64_t length = range.second;
            CAPTURE(offset);
            CAPTURE(length);
            auto r = wait(client.read_range(server.url("/obj"), offset, length));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == data.substr(offset, length));
            CHECK(server.last_range("/obj") ==
                  "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1));
        }
        CHECK(server.requests("/obj") == static_cast<int>(cases.size()));
        const auto stats = client.stats();
        CHECK(stats.requests == cases.size());
        CHECK(stats.retries == 0);
        CHECK(stats.bytes == 1 + 1000 + 1 + 123 + 998 + 2);
    }

    TEST_CASE("range running past the end of the object is a permanent error") {
        TestServer server;
        server.put("/obj", pattern(1000));
        HttpClient client(fast_options());
        SUBCASE("partly past the end (short 206)") {
            auto r = wait(client.read_range(server.url("/obj"), 990, 20));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::HttpStatus);
            CHECK(contains(r.error().message, "GET " + server.url("/obj") + " bytes=990-1009: "));
            CHECK(contains(r.error().message, "past the end of the object (1000 bytes)"));
        }
        SUBCASE("entirely past the end (416)") {
            auto r = wait(client.read_range(server.url("/obj"), 1000, 1));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::HttpStatus);
            CHECK(contains(r.error().message, server.url("/obj") + " bytes=1000-1000: HTTP 416"));
        }
        SUBCASE("server ignores Range and the object is too short") {
            server.set_fault("/obj", Fault::IgnoreRange);
            auto r = wait(client.read_range(server.url("/obj"), 990, 20));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::HttpStatus);
            CHECK(contains(r.error().message, "(1000 bytes) ends before the range"));
        }
        CHECK(server.requests("/obj") == 1);
    }

    TEST_CASE("zero-length range completes at once without a request") {
        TestServer server;
        HttpClient client(fast_options());
        auto f = client.read_range(server.url("/obj"), 5, 0);
        REQUIRE(f.wait_for(0ms) == std::future_status::ready);
        auto r = f.get();
        REQUIRE(r.ok());
        CHECK(r.value().empty());
        CHECK(server.requests("/obj") == 0);
        CHECK(client.stats().requests == 0);
    }

    TEST_CASE("concurrent range reads from many threads all return the right bytes") {
        TestServer server;
        const std::string data = pattern(1 << 20);
        server.put("/big", data);
        HttpOptions options = fast_options();
        options.max_connections = 4;  // fewer slots than requests: exercises the queue
        HttpClient client(options);
        constexpr int kThreads = 8;
        constexpr int kPerThread = 8;
        std::vector<int> wrong(kThreads, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                std::mt19937_64 rng(static_cast<std::uint64_t>(1234 + t));
                std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
                std::vector<std::future<Result<std::string>>> futures;
                for (int i = 0; i < kPerThread; ++i) {
                    const std::uint64_t length = 1 + rng() % 65536;
                    const std::uint64_t offset = rng() % (data.size() - length + 1);
                    ranges.emplace_back(offset, length);
                    futures.push_back(client.read_range(server.url("/big"), offset, length));
                }
                for (int i = 0; i < kPerThread; ++i) {
                    const auto i_ = static_cast<std::size_t>(i);
                    if (futures[i_].wait_for(10s) != std::future_status::ready) {
                        ++wrong[static_cast<std::size_t>(t)];
                        continue;
                    }
                    auto r = futures[i_].get();
                    if (!r.ok() || r.value() != data.substr(ranges[i_].first, ranges[i_].second)) {
                        ++wrong[static_cast<std::size_t>(t)];
                    }
                }
            });
        }
        for (auto& th : threads) th.join();
        for (int t = 0; t < kThreads; ++t) CHECK(wrong[static_cast<std::size_t>(t)] == 0);
        CHECK(server.requests("/big") == kThreads * kPerThread);
        CHECK(client.stats().retries == 0);
        CHECK(server.connections() <= 4);
    }

    TEST_CASE("transient status is retried and then succeeds") {
        TestServer server;
        const std::string data = pattern(4096);
        server.put("/obj", data);
        int status = 0;
        SUBCASE("503") { status = 503; }
        SUBCASE("429") { status = 429; }
        SUBCASE("500") { status = 500; }
        SUBCASE("408") { status = 408; }
        CAPTURE(status);
        server.set_fault("/obj", Fault::Status, 2, status);
        HttpClient client(fast_options());
        auto r = wait(client.read_range(server.url("/obj"), 100, 200));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == data.substr(100, 200));
        CHECK(server.requests("/obj") == 3);
        CHECK(client.stats().requests == 3);
        CHECK(client.stats().retries == 2);
    }

    TEST_CASE("exhausted retries give an error naming the URL, range, status and attempts") {
        TestServer server;
        server.put("/obj", pattern(100));
        server.set_fault("/obj", Fault::Status, -1, 503);
        HttpOptions options = fast_options();
        options.max_retries = 2;
        HttpClient client(options);
        auto r = wait(client.read_range(server.url("/obj"), 0, 10));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "GET " + server.url("/obj") + " bytes=0-9: HTTP 503 (injected fault) after 3 attempts");
        CHECK(server.requests("/obj") == 3);
        CHECK(client.stats().retries == 2);
    }

    TEST_CASE("retries back off exponentially up to the cap") {
        TestServer server;
        server.put("/obj", pattern(100));
        server.set_fault("/obj", Fault::Status, 4, 503);
        HttpOptions options = fast_options();
        options.max_retries = 4;
        options.backoff_initial = 40ms;
        options.backoff_max = 100ms;
        HttpClient client(options);
        const auto start = Clock::now();
        auto r = wait(client.read_range(server.url("/obj"), 0, 10));
        const auto elapsed = Clock::now() - start;
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/obj") == 5);
        // 40 + 80 + 100 + 100 ms of backoff, and not wildly more.
        CHECK(elapsed >= 320ms);
        CHECK(elapsed < 2000ms);
    }

    TEST_CASE("404 is not retried and names the URL") {
        TestServer server;
        HttpClient client(fast_options());
        SUBCASE("read_range") {
            auto r = wait(client.read_range(server.url("/missing"), 0, 10));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::NotFound);
            CHECK(r.error().message == "GET " + server.url("/missing") + " bytes=0-9: HTTP 404 (not found)");
        }
        SUBCASE("get") {
            auto r = wait(client.get(server.url("/missing")));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::NotFound);
            CHECK(r.error().message == "GET " + server.url("/missing") + ": HTTP 404 (not found)");
        }
        CHECK(server.requests("/missing") == 1);
        CHECK(client.stats().retries == 0);
    }

    TEST_CASE("other 4xx is permanent") {
        TestServer server;
        server.put("/obj", pattern(100));
        server.set_fault("/obj", Fault::Status, -1, 403);
        HttpClient client(fast_options());
        auto r = wait(client.read_range(server.url("/obj"), 0, 10));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "GET " + server.url("/obj") + " bytes=0-9: HTTP 403 (injected fault)");
        CHECK(server.requests("/obj") == 1);
    }

    TEST_CASE("short body is retried") {
        TestServer server;
        const std::string data = pattern(100000);
        server.put("/obj", data);
        server.set_fault("/obj", Fault::ShortBody, 2);
        HttpClient client(fast_options());
        SUBCASE("read_range") {
            auto r = wait(client.read_range(server.url("/obj"), 1000, 50000));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == data.substr(1000, 50000));
        }
        SUBCASE("get") {
            auto r = wait(client.get(server.url("/obj")));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == data);
        }
        CHECK(server.requests("/obj") == 3);
        CHECK(client.stats().retries == 2);
    }

    TEST_CASE("short body on every attempt is a Network error") {
        TestServer server;
        server.put("/obj", pattern(1000));
        server.set_fault("/obj", Fault::ShortBody, -1);
        HttpOptions options = fast_options();
        options.max_retries = 1;
        HttpClient client(options);
        auto r = wait(client.read_range(server.url("/obj"), 0, 1000));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Network);
        CHECK(contains(r.error().message, "GET " + server.url("/obj") + " bytes=0-999: "));
        CHECK(contains(r.error().message, " after 2 attempts"));
        CHECK(server.requests("/obj") == 2);
    }

    TEST_CASE("stalled transfer times out and is retried") {
        TestServer server;
        const std::string data = pattern(5000);
        server.put("/obj", data);
        server.set_fault("/obj", Fault::Stall, 1);
        HttpOptions options = fast_options();
        options.stall_timeout = 300ms;
        HttpClient client(options);
        const auto start = Clock::now();
        auto r = wait(client.read_range(server.url("/obj"), 10, 4000));
        const auto elapsed = Clock::now() - start;
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == data.substr(10, 4000));
        CHECK(server.requests("/obj") == 2);
        CHECK(elapsed >= 300ms);
        CHECK(elapsed < 1500ms);
    }

    TEST_CASE("stall on every attempt is a Network error that says so") {
        TestServer server;
        server.put("/obj", pattern(5000));
        server.set_fault("/obj", Fault::Stall, -1);
        HttpOptions options = fast_options();
        options.stall_timeout = 200ms;
        options.max_retries = 1;
        HttpClient client(options);
        auto r = wait(client.get(server.url("/obj")));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Network);
        CHECK(r.error().message ==
              "GET " + server.url("/obj") + ": stalled: no data for 200 ms after 2 attempts");
        CHECK(server.requests("/obj") == 2);
    }

    TEST_CASE("200 answer ignoring Range is sliced to the requested bytes") {
        TestServer server;
        const std::string data = pattern(300000);
        server.put("/obj", data);
        server.set_fault("/obj", Fault::IgnoreRange);
        HttpClient client(fast_options());
        const std::vector<std::pair<std::uint64_t, std::uint64_t>> cases = {
            {0, 1}, {0, 300000}, {299999, 1}, {12345, 100000}, {100, 50}};
        for (const auto& range : cases) {
            const std::uint64_t offset = range.first;
            const std::uint64_t length = range.second;
            CAPTURE(offset);
            CAPTURE(length);
            auto r = wait(client.read_range(server.url("/obj"), offset, length));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value().size() == length);
            CHECK(r.value() == data.substr(offset, length));
        }
        CHECK(server.requests("/obj") == static_cast<int>(cases.size()));
        CHECK(client.stats().retries == 0);
    }

    TEST_CASE("206 with the wrong Content-Range is retried") {
        TestServer server;
        const std::string data = pattern(1000);
        server.put("/obj", data);
        SUBCASE("wrong start") { server.set_fault("/obj", Fault::WrongContentRange, 1); }
        SUBCASE("one byte too many") { server.set_fault("/obj", Fault::ExtraByte, 1); }
        HttpClient client(fast_options());
        auto r = wait(client.read_range(server.url("/obj"), 200, 100));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == data.substr(200, 100));
        CHECK(server.requests("/obj") == 2);
        CHECK(client.stats().retries == 1);
    }

    TEST_CASE("206 with the wrong Content-Range every time is an error naming both ranges") {
        TestServer server;
        server.put("/obj", pattern(1000));
        server.set_fault("/obj", Fault::WrongContentRange);
        HttpOptions options = fast_options();
        options.max_retries = 1;
        HttpClient client(options);
        auto r = wait(client.read_range(server.url("/obj"), 200, 100));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "GET " + server.url("/obj") +
                                       " bytes=200-299: HTTP 206 with Content-Range 'bytes 201-300/1000', "
                                       "expected bytes 200-299 after 2 attempts");
    }

    TEST_CASE("connection refused fails quickly and names the URL") {
        const std::string url = "http://127.0.0.1:" + std::to_string(shelbyfs::test::unused_port()) + "/obj";
        HttpOptions options = fast_options();
        options.max_retries = 2;
        HttpClient client(options);
        const auto start = Clock::now();
        auto r = wait(client.read_range(url, 0, 10));
        const auto elapsed = Clock::now() - start;
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Network);
        CHECK(contains(r.error().message, "GET " + url + " bytes=0-9: "));
        CHECK(contains(r.error().message, "after 3 attempts"));
        CHECK(client.stats().requests == 3);
        CHECK(elapsed < 1000ms);
    }

    TEST_CASE("malformed URL is a permanent InvalidArgument error") {
        HttpClient client(fast_options());
        SUBCASE("unsupported scheme") {
            auto r = wait(client.get("gopher://127.0.0.1/x"));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::InvalidArgument);
            CHECK(contains(r.error().message, "GET gopher://127.0.0.1/x: "));
        }
        SUBCASE("garbage") {
            auto r = wait(client.read_range("http://[::1/x", 0, 1));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::InvalidArgument);
            CHECK(contains(r.error().message, "GET http://[::1/x bytes=0-0: "));
        }
        CHECK(client.stats().requests == 1);
        CHECK(client.stats().retries == 0);
    }

    TEST_CASE("get returns the whole object") {
        TestServer server;
        HttpClient client(fast_options());
        SUBCASE("large") {
            const std::string data = pattern(3 << 20);
            server.put("/manifest.json", data);
            auto r = wait(client.get(server.url("/manifest.json")));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == data);
            CHECK(server.last_range("/manifest.json").empty());
        }
        SUBCASE("empty") {
            server.put("/manifest.json", "");
            auto r = wait(client.get(server.url("/manifest.json")));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value().empty());
        }
        CHECK(server.requests("/manifest.json") == 1);
    }

    TEST_CASE("get of a body above max_body_bytes fails without retry") {
        TestServer server;
        server.put("/obj", pattern(10000));
        HttpOptions options = fast_options();
        options.max_body_bytes = 4096;
        HttpClient client(options);
        auto r = wait(client.get(server.url("/obj")));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "GET " + server.url("/obj") + ": body larger than the 4096-byte limit");
        CHECK(server.requests("/obj") == 1);
    }

    TEST_CASE("sequential requests reuse keep-alive connections") {
        TestServer server;
        const std::string data = pattern(10000);
        server.put("/obj", data);
        HttpClient client(fast_options());
        for (int i = 0; i < 50; ++i) {
            const auto offset = static_cast<std::uint64_t>(i * 100);
            auto r = wait(client.read_range(server.url("/obj"), offset, 100));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == data.substr(offset, 100));
        }
        CHECK(server.requests("/obj") == 50);
        CHECK(server.connections() <= 2);
        CHECK(client.stats().connections == static_cast<std::uint64_t>(server.connections()));
    }

    TEST_CASE("a retry waiting for its backoff does not block other transfers") {
        TestServer server;
        server.put("/slow", pattern(100));
        server.put("/fast", pattern(100, 3));
        server.set_fault("/slow", Fault::Status, -1, 503);
        HttpOptions options = fast_options();
        options.max_retries = 1;
        options.backoff_initial = 3000ms;
        options.backoff_max = 3000ms;
        HttpClient client(options);
        auto slow = client.read_range(server.url("/slow"), 0, 10);
        // Wait until the first attempt has failed and the retry is parked.
        for (int i = 0; i < 200 && client.stats().retries == 0; ++i) std::this_thread::sleep_for(5ms);
        REQUIRE(client.stats().retries == 1);
        const auto start = Clock::now();
        auto r = wait(client.read_range(server.url("/fast"), 5, 20), 1000ms);
        CHECK(Clock::now() - start < 500ms);
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == pattern(100, 3).substr(5, 20));
        CHECK(slow.wait_for(0ms) == std::future_status::timeout);
        CHECK(server.requests("/slow") == 1);
    }

    TEST_CASE("destroying the client fails every pending request") {
        const int fds_before = shelbyfs::test::open_fd_count();
        {
            TestServer server;
            server.put("/stall", pattern(100));
            server.put("/busy", pattern(100));
            server.set_fault("/stall", Fault::Stall);
            server.set_fault("/busy", Fault::Status, -1, 503);
            std::vector<std::future<Result<std::string>>> futures;
            {
                HttpOptions options = fast_options();
                options.stall_timeout = 10s;
                options.backoff_initial = 10s;
                options.backoff_max = 10s;
                options.max_connections = 3;
                HttpClient client(options);
                // One request parked for a retry, three in flight, one queued.
                futures.push_back(client.read_range(server.url("/busy"), 0, 10));
                for (int i = 0; i < 400 && client.stats().retries == 0; ++i) std::this_thread::sleep_for(5ms);
                REQUIRE(client.stats().retries == 1);
                for (int i = 0; i < 4; ++i) futures.push_back(client.read_range(server.url("/stall"), 0, 10));
                for (int i = 0; i < 400 && server.requests("/stall") < 3; ++i) std::this_thread::sleep_for(5ms);
                REQUIRE(server.requests("/stall") == 3);
            }
            for (auto& f : futures) {
                REQUIRE(f.wait_for(0ms) == std::future_status::ready);
                auto r = f.get();
                REQUIRE_FALSE(r.ok());
                CHECK(r.error().code == Errc::Network);
                CHECK(r.error().message == "GET " + server.url(r.error().message.find("/busy") != std::string::npos
                                                                   ? "/busy"
                                                                   : "/stall") +
                                               " bytes=0-9: client shutting down");
            }
            CHECK(server.requests("/stall") == 3);
            CHECK(server.requests("/busy") == 1);
        }
        CHECK(shelbyfs::test::open_fd_count() == fds_before);
    }

    TEST_CASE("client and server leave no file descriptors behind") {
        const int fds_before = shelbyfs::test::open_fd_count();
        {
            TestServer server;
            server.put("/obj", pattern(1000));
            server.set_fault("/obj", Fault::ShortBody, 1);
            HttpClient client(fast_options());
            auto r = wait(client.read_range(server.url("/obj"), 0, 1000));
            REQUIRE(r.ok());
            auto g = wait(client.get(server.url("/obj")));
            REQUIRE(g.ok());
        }
        CHECK(shelbyfs::test::open_fd_count() == fds_before);
    }

    TEST_CASE("put stores the body, which reads back byte for byte") {
        TestServer server;
        HttpClient client(fast_options());
        std::string data;
        SUBCASE("small") { data = pattern(1000); }
        SUBCASE("empty") { data = ""; }
        SUBCASE("8 MiB") { data = pattern(8 << 20); }
        CAPTURE(data.size());
        const std::string url = server.url("/ckpt/obj");
        auto r = wait(client.put(url, shared(data), {"Content-Type: application/octet-stream", "X-Shelby: 1"}));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/ckpt/obj") == 1);
        REQUIRE(server.object("/ckpt/obj").has_value());
        CHECK(*server.object("/ckpt/obj") == data);
        const std::string request = server.last_request("/ckpt/obj");
        CHECK(contains(request, "PUT /ckpt/obj HTTP/1.1\r\n"));
        CHECK(contains(request, "\r\nContent-Length: " + std::to_string(data.size()) + "\r\n"));
        CHECK(contains(request, "\r\nContent-Type: application/octet-stream\r\n"));
        CHECK(contains(request, "\r\nX-Shelby: 1\r\n"));
        CHECK_FALSE(contains(request, "Expect:"));
        const auto stats = client.stats();
        CHECK(stats.requests == 1);
        CHECK(stats.retries == 0);
        CHECK(stats.bytes_sent == data.size());
        auto g = wait(client.get(url));
        REQUIRE_MESSAGE(g.ok(), g.error().message);
        CHECK(g.value() == data);
        auto h = wait(client.head(url));
        REQUIRE_MESSAGE(h.ok(), h.error().message);
        CHECK(h.value() == data.size());
    }

    TEST_CASE("put replaces an existing object") {
        TestServer server;
        server.put("/obj", pattern(5000, 1));
        HttpClient client(fast_options());
        auto r = wait(client.put(server.url("/obj"), shared(pattern(300, 2))));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(*server.object("/obj") == pattern(300, 2));
    }

    TEST_CASE("put is retried after a transient status and the server holds exactly the body") {
        TestServer server;
        const std::string data = pattern(200000);
        int status = 0;
        SUBCASE("503") { status = 503; }
        SUBCASE("429") { status = 429; }
        SUBCASE("408") { status = 408; }
        CAPTURE(status);
        server.set_fault("/obj", Fault::Status, 2, status);
        HttpClient client(fast_options());
        auto r = wait(client.put(server.url("/obj"), shared(data)));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/obj") == 3);
        REQUIRE(server.object("/obj").has_value());
        CHECK(*server.object("/obj") == data);
        const auto stats = client.stats();
        CHECK(stats.requests == 3);
        CHECK(stats.retries == 2);
        CHECK(stats.bytes_sent == 3 * data.size());  // the whole body, every attempt
    }

    TEST_CASE("put answered with a permanent 4xx fails after one attempt naming URL, size and status") {
        TestServer server;
        int status = 0;
        SUBCASE("403") { status = 403; }
        SUBCASE("404") { status = 404; }
        SUBCASE("409") { status = 409; }
        CAPTURE(status);
        server.set_fault("/obj", Fault::Status, -1, status);
        HttpClient client(fast_options());
        auto r = wait(client.put(server.url("/obj"), shared(pattern(100))));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "PUT " + server.url("/obj") + " (100 bytes): HTTP " + std::to_string(status) + " (injected fault)");
        CHECK(server.requests("/obj") == 1);
        CHECK(client.stats().retries == 0);
        CHECK_FALSE(server.object("/obj").has_value());
    }

    TEST_CASE("put with retries exhausted is an error naming URL, size, status and attempts") {
        TestServer server;
        server.set_fault("/obj", Fault::Status, -1, 503);
        HttpOptions options = fast_options();
        options.max_retries = 2;
        HttpClient client(options);
        auto r = wait(client.put(server.url("/obj"), shared(pattern(100))));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message == "PUT " + server.url("/obj") + " (100 bytes): HTTP 503 (injected fault) after 3 attempts");
        CHECK(server.requests("/obj") == 3);
        CHECK(client.stats().retries == 2);
        CHECK_FALSE(server.object("/obj").has_value());
    }

    TEST_CASE("put cut off mid-upload is retried from the first byte") {
        TestServer server;
        const std::string data = pattern(1 << 20);
        server.set_fault("/obj", Fault::ShortBody, 1);
        HttpClient client(fast_options());
        auto r = wait(client.put(server.url("/obj"), shared(data)));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/obj") == 2);
        REQUIRE(server.object("/obj").has_value());
        CHECK(*server.object("/obj") == data);
        CHECK(client.stats().retries == 1);
    }

    TEST_CASE("put to a connection refused fails quickly with a Network error") {
        const std::string url = "http://127.0.0.1:" + std::to_string(shelbyfs::test::unused_port()) + "/obj";
        HttpOptions options = fast_options();
        options.max_retries = 1;
        HttpClient client(options);
        auto r = wait(client.put(url, shared("abc")));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Network);
        CHECK(contains(r.error().message, "PUT " + url + " (3 bytes): "));
        CHECK(contains(r.error().message, " after 2 attempts"));
    }

    TEST_CASE("put stalled by the server mid-upload times out and is retried") {
        TestServer server;
        // Bigger than the loopback socket buffers, so the client blocks sending.
        const std::string data = pattern(16 << 20);
        server.set_fault("/obj", Fault::Stall, 1);
        HttpOptions options = fast_options();
        options.stall_timeout = 300ms;
        HttpClient client(options);
        const auto start = Clock::now();
        auto r = wait(client.put(server.url("/obj"), shared(data)));
        const auto elapsed = Clock::now() - start;
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        REQUIRE(server.object("/obj").has_value());
        CHECK(*server.object("/obj") == data);
        CHECK(server.requests("/obj") == 2);
        CHECK(client.stats().retries == 1);
        CHECK(elapsed >= 300ms);
        CHECK(elapsed < 3000ms);
    }

    TEST_CASE("put stalled on every attempt is a Network error that says so, within a bounded time") {
        TestServer server;
        server.set_fault("/obj", Fault::Stall, -1);
        HttpOptions options = fast_options();
        options.stall_timeout = 200ms;
        options.max_retries = 1;
        HttpClient client(options);
        SUBCASE("small body: the server never answers") {
            const auto start = Clock::now();
            auto r = wait(client.put(server.url("/obj"), shared(pattern(1000))));
            CHECK(Clock::now() - start < 2000ms);
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::Network);
            CHECK(r.error().message ==
                  "PUT " + server.url("/obj") + " (1000 bytes): stalled: no data for 200 ms after 2 attempts");
        }
        SUBCASE("large body: the server stops reading") {
            const auto start = Clock::now();
            auto r = wait(client.put(server.url("/obj"), shared(pattern(16 << 20))));
            CHECK(Clock::now() - start < 2000ms);
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::Network);
            CHECK(r.error().message == "PUT " + server.url("/obj") +
                                           " (16777216 bytes): stalled: no data for 200 ms after 2 attempts");
        }
        CHECK(server.requests("/obj") == 2);
        CHECK_FALSE(server.object("/obj").has_value());
    }

    TEST_CASE("head returns the size of a stored object and NotFound for a missing one") {
        TestServer server;
        server.put("/obj", pattern(12345));
        server.put("/empty", "");
        HttpClient client(fast_options());
        auto r = wait(client.head(server.url("/obj")));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(r.value() == 12345);
        auto e = wait(client.head(server.url("/empty")));
        REQUIRE_MESSAGE(e.ok(), e.error().message);
        CHECK(e.value() == 0);
        auto m = wait(client.head(server.url("/missing")));
        REQUIRE_FALSE(m.ok());
        CHECK(m.error().code == Errc::NotFound);
        CHECK(m.error().message == "HEAD " + server.url("/missing") + ": HTTP 404 (not found)");
        CHECK(server.requests("/obj") == 1);
        CHECK(server.requests("/missing") == 1);
        CHECK(contains(server.last_request("/obj"), "HEAD /obj HTTP/1.1\r\n"));
        CHECK(client.stats().bytes == 0);
    }

    TEST_CASE("head retries a transient status and fails permanently on other statuses") {
        TestServer server;
        server.put("/obj", pattern(777));
        HttpClient client(fast_options());
        SUBCASE("503 then 200") {
            server.set_fault("/obj", Fault::Status, 1, 503);
            auto r = wait(client.head(server.url("/obj")));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            CHECK(r.value() == 777);
            CHECK(server.requests("/obj") == 2);
        }
        SUBCASE("403") {
            server.set_fault("/obj", Fault::Status, -1, 403);
            auto r = wait(client.head(server.url("/obj")));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == Errc::HttpStatus);
            CHECK(r.error().message == "HEAD " + server.url("/obj") + ": HTTP 403");
            CHECK(server.requests("/obj") == 1);
        }
    }

    TEST_CASE("put with a malformed header fails without a request") {
        TestServer server;
        HttpClient client(fast_options());
        std::string header;
        SUBCASE("CR LF injection") { header = "X-A: 1\r\nX-B: 2"; }
        SUBCASE("no colon") { header = "X-A"; }
        auto f = client.put(server.url("/obj"), shared("abc"), {header});
        REQUIRE(f.wait_for(0ms) == std::future_status::ready);
        auto r = f.get();
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::InvalidArgument);
        CHECK(contains(r.error().message, "PUT " + server.url("/obj") + " (3 bytes): bad header"));
        CHECK(server.requests("/obj") == 0);
        CHECK(client.stats().requests == 0);
    }

    TEST_CASE("concurrent puts from several threads all land") {
        TestServer server;
        HttpOptions options = fast_options();
        options.max_connections = 4;
        HttpClient client(options);
        constexpr int kThreads = 6;
        constexpr int kPerThread = 5;
        // Every third object answers 503 once, so retries interleave with other uploads.
        for (int t = 0; t < kThreads; ++t) {
            for (int i = 0; i < kPerThread; i += 3) {
                server.set_fault("/t" + std::to_string(t) + "/" + std::to_string(i), Fault::Status, 1, 503);
            }
        }
        std::vector<int> failed(kThreads, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                std::vector<std::future<Result<void>>> futures;
                for (int i = 0; i < kPerThread; ++i) {
                    const auto size = static_cast<std::size_t>(1 + (t * kPerThread + i) * 40000);
                    futures.push_back(client.put(server.url("/t" + std::to_string(t) + "/" + std::to_string(i)),
                                                 shared(pattern(size, static_cast<unsigned>(t * 100 + i)))));
                }
                for (auto& f : futures) {
                    if (f.wait_for(10s) != std::future_status::ready || !f.get().ok()) {
                        ++failed[static_cast<std::size_t>(t)];
                    }
                }
            });
        }
        for (auto& th : threads) th.join();
        std::uint64_t total = 0;
        for (int t = 0; t < kThreads; ++t) {
            CHECK(failed[static_cast<std::size_t>(t)] == 0);
            for (int i = 0; i < kPerThread; ++i) {
                const std::string path = "/t" + std::to_string(t) + "/" + std::to_string(i);
                const auto size = static_cast<std::size_t>(1 + (t * kPerThread + i) * 40000);
                CAPTURE(path);
                CHECK(server.requests(path) == (i % 3 == 0 ? 2 : 1));
                const auto stored = server.object(path);
                REQUIRE(stored.has_value());
                CHECK(*stored == pattern(size, static_cast<unsigned>(t * 100 + i)));
                total += size * (i % 3 == 0 ? 2 : 1);
            }
        }
        CHECK(client.stats().bytes_sent == total);
        CHECK(client.stats().retries == kThreads * 2);
        CHECK(server.connections() <= 4 + kThreads * 2);
    }

    TEST_CASE("put and head leave no file descriptors behind") {
        const int fds_before = shelbyfs::test::open_fd_count();
        {
            TestServer server;
            server.set_fault("/obj", Fault::Stall, 1);
            HttpOptions options = fast_options();
            options.stall_timeout = 200ms;
            HttpClient client(options);
            auto r = wait(client.put(server.url("/obj"), shared(pattern(1000))));
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            auto h = wait(client.head(server.url("/obj")));
            REQUIRE_MESSAGE(h.ok(), h.error().message);
            CHECK(h.value() == 1000);
        }
        CHECK(shelbyfs::test::open_fd_count() == fds_before);
    }

    TEST_CASE("put_file streams a multi-MiB file that arrives byte for byte") {
        const int fds_before = shelbyfs::test::open_fd_count();
        {
            TempDir dir;
            // Not a multiple of any buffer size, so the last read is a partial one.
            const std::string data = pattern((12 << 20) + 12345, 3);
            const std::string path = dir.write("ckpt.bin", data);
            TestServer server;
            HttpClient client(fast_options());
            const std::string url = server.url("/ckpt/file");
            auto r = wait(client.put_file(url, path, {"Content-Type: application/octet-stream"}), 10000ms);
            REQUIRE_MESSAGE(r.ok(), r.error().message);
            REQUIRE(server.object("/ckpt/file").has_value());
            CHECK(server.object("/ckpt/file")->size() == data.size());
            CHECK(*server.object("/ckpt/file") == data);
            const std::string request = server.last_request("/ckpt/file");
            CHECK(contains(request, "PUT /ckpt/file HTTP/1.1\r\n"));
            CHECK(contains(request, "\r\nContent-Length: " + std::to_string(data.size()) + "\r\n"));
            CHECK(contains(request, "\r\nContent-Type: application/octet-stream\r\n"));
            CHECK_FALSE(contains(request, "Expect:"));
            CHECK(server.requests("/ckpt/file") == 1);
            const auto stats = client.stats();
            CHECK(stats.requests == 1);
            CHECK(stats.retries == 0);
            CHECK(stats.bytes_sent == data.size());
        }
        // The source file's descriptor is closed once the upload is done.
        CHECK(shelbyfs::test::open_fd_count() == fds_before);
    }

    TEST_CASE("put_file cut off mid-body is retried and re-sends the whole file") {
        TempDir dir;
        const std::string data = pattern(4 << 20, 5);
        const std::string path = dir.write("ckpt.bin", data);
        TestServer server;
        server.set_fault("/obj", Fault::ShortBody, 1);  // read half the body, then reset
        HttpClient client(fast_options());
        auto r = wait(client.put_file(server.url("/obj"), path), 10000ms);
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/obj") == 2);
        CHECK(client.stats().retries == 1);
        // Half on the first attempt, then every byte again from offset 0.
        CHECK(server.body_bytes("/obj") == data.size() / 2 + data.size());
        REQUIRE(server.object("/obj").has_value());
        CHECK(*server.object("/obj") == data);
    }

    TEST_CASE("put_file re-reads the whole file on every retry after a transient status") {
        TempDir dir;
        const std::string data = pattern(300000, 9);
        const std::string path = dir.write("ckpt.bin", data);
        TestServer server;
        server.set_fault("/obj", Fault::Status, 2, 503);
        HttpClient client(fast_options());
        auto r = wait(client.put_file(server.url("/obj"), path));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        CHECK(server.requests("/obj") == 3);
        CHECK(server.body_bytes("/obj") == 3 * data.size());
        CHECK(client.stats().bytes_sent == 3 * data.size());
        REQUIRE(server.object("/obj").has_value());
        CHECK(*server.object("/obj") == data);
    }

    TEST_CASE("put_file with retries exhausted names URL, size, path, status and attempts") {
        TempDir dir;
        const std::string path = dir.write("ckpt.bin", pattern(100));
        TestServer server;
        server.set_fault("/obj", Fault::Status, -1, 503);
        HttpOptions options = fast_options();
        options.max_retries = 1;
        HttpClient client(options);
        auto r = wait(client.put_file(server.url("/obj"), path));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::HttpStatus);
        CHECK(r.error().message ==
              "PUT " + server.url("/obj") + " (100 bytes from " + path + "): HTTP 503 (injected fault) after 2 attempts");
        CHECK(server.requests("/obj") == 2);
    }

    TEST_CASE("put_file of a missing or unreadable local file fails at once with Io naming the path") {
        TempDir dir;
        TestServer server;
        HttpClient client(fast_options());
        std::string path;
        std::string cause;
        SUBCASE("missing") {
            path = dir.file("no-such-file");
            cause = "cannot open " + path + ": No such file or directory";
        }
        SUBCASE("a directory") {
            path = dir.path();
            cause = "cannot upload " + path + ": not a regular file";
        }
        SUBCASE("a FIFO with no writer (must not block)") {
            path = dir.file("fifo");
            REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
            cause = "cannot upload " + path + ": not a regular file";
        }
        CAPTURE(path);
        auto f = client.put_file(server.url("/obj"), path);
        REQUIRE(f.wait_for(0ms) == std::future_status::ready);
        auto r = f.get();
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Io);
        CHECK(r.error().message == "PUT " + server.url("/obj") + ": " + cause);
        CHECK(server.requests("/obj") == 0);
        CHECK(client.stats().requests == 0);
    }

    TEST_CASE("put_file of a file that shrinks during the upload fails with Io and is not retried") {
        TempDir dir;
        const std::string data = pattern(1 << 20);
        const std::string path = dir.write("ckpt.bin", data);
        TestServer server;
        // Every attempt the server completes is refused, so only the local error can end this early.
        server.set_fault("/obj", Fault::Status, -1, 503);
        HttpOptions options = fast_options();
        options.max_retries = 5;
        options.backoff_initial = 100ms;
        HttpClient client(options);
        auto f = client.put_file(server.url("/obj"), path);
        // The size was fixed at submission; the file now ends short of it.
        std::filesystem::resize_file(path, 1000);
        auto r = wait(std::move(f));
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::Io);
        CHECK(contains(r.error().message, "PUT " + server.url("/obj") + " (1048576 bytes from " + path + "): "));
        CHECK(contains(r.error().message, "local file " + path + " ended at byte "));
        // At most the one attempt that may have read the file before it shrank was retried.
        CHECK(server.requests("/obj") <= 2);
        CHECK(client.stats().retries <= 1);
        CHECK_FALSE(server.object("/obj").has_value());
    }

    TEST_CASE("put_file of an empty file stores an empty object") {
        TempDir dir;
        const std::string path = dir.write("empty", "");
        TestServer server;
        server.put("/obj", "previous");
        HttpClient client(fast_options());
        auto r = wait(client.put_file(server.url("/obj"), path));
        REQUIRE_MESSAGE(r.ok(), r.error().message);
        REQUIRE(server.object("/obj").has_value());
        CHECK(server.object("/obj")->empty());
        CHECK(contains(server.last_request("/obj"), "\r\nContent-Length: 0\r\n"));
        CHECK(client.stats().bytes_sent == 0);
    }

    TEST_CASE("put_file with a malformed header fails without a request") {
        TempDir dir;
        const std::string path = dir.write("f", "abc");
        TestServer server;
        HttpClient client(fast_options());
        auto f = client.put_file(server.url("/obj"), path, {"X-A: 1\r\nX-B: 2"});
        REQUIRE(f.wait_for(0ms) == std::future_status::ready);
        auto r = f.get();
        REQUIRE_FALSE(r.ok());
        CHECK(r.error().code == Errc::InvalidArgument);
        CHECK(contains(r.error().message, "PUT " + server.url("/obj") + " (3 bytes from " + path + "): bad header"));
        CHECK(server.requests("/obj") == 0);
    }
}
