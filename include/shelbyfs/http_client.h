// HttpClient: the one owner of libcurl. A curl-multi I/O thread serves ranged
// GETs, whole-object GETs, PUTs (from memory or streamed from a file) and HEADs
// submitted from any thread, with retries.
#pragma once

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

struct HttpOptions {
    std::chrono::milliseconds connect_timeout{10'000};
    /// A transfer that moves no byte for this long is aborted (and retried).
    std::chrono::milliseconds stall_timeout{30'000};
    /// Retries after the first attempt, for transient failures only:
    /// connection errors, timeouts, HTTP 408/429/5xx, short or malformed bodies.
    int max_retries = 5;
    std::chrono::milliseconds backoff_initial{100};  ///< doubled per retry ...
    std::chrono::milliseconds backoff_max{5'000};    ///< ... up to this
    long max_connections = 16;                       ///< total, kept alive between requests
    std::string user_agent = "shelbyfs/0.1";
    /// Largest body get() accepts, and largest `length` read_range() accepts;
    /// bigger ones fail with Errc::HttpStatus / Errc::InvalidArgument, unretried.
    std::uint64_t max_body_bytes = std::uint64_t{1} << 30;
};

/// Thread-safe. Owns one I/O thread, started in the constructor and joined in
/// the destructor; pending requests then fail with Errc::Network. Reused
/// keep-alive connections. Permanent failures (4xx other than 408/429, bad
/// URL) are not retried. Errors name the URL, the range and the cause.
///
/// Error codes: 404 → NotFound; other unusable statuses, and a range that
/// runs past the end of the object (416, or a short 206/200 that says so) →
/// HttpStatus; transport failures (refused, reset, timeout, stall, short
/// body) → Network once retries run out; malformed URL or unsupported
/// scheme → InvalidArgument. Redirects (up to 5, http/https only) are followed.
class HttpClient final : public BlobReader {
public:
    explicit HttpClient(HttpOptions options = {});
    ~HttpClient() override;
    HttpClient(const HttpClient&) = delete;
    HttpClient& operator=(const HttpClient&) = delete;

    /// GET `url` with `Range: bytes=offset-(offset+length-1)`. A 206 must
    /// carry exactly `length` bytes starting at `offset`; a 200 (server ignored
    /// Range) is accepted and sliced if it holds the range. `length` == 0
    /// completes immediately with an empty string.
    std::future<Result<std::string>> read_range(const std::string& url, std::uint64_t offset,
                                                std::uint64_t length) override;
    /// GET the whole object (manifests). 404 gives Errc::NotFound.
    std::future<Result<std::string>> get(const std::string& url);

    /// PUT `body` to `url`. Succeeds only on 200/201/204. Retries transient failures
    /// (connection errors, stalls, 408/429/5xx) like reads, re-sending the whole body.
    /// Permanent failures (other 4xx, 404 included, which gives HttpStatus rather
    /// than NotFound; 3xx, as redirects are not followed for PUT) are not retried.
    /// Errors name the URL, size and cause. `headers` are extra "Name: value"
    /// request headers; one holding CR/LF or no ':' fails with InvalidArgument.
    /// A null `body` uploads an empty object.
    std::future<Result<void>> put(const std::string& url, std::shared_ptr<const std::string> body,
                                  std::vector<std::string> headers = {});
    /// PUT the local file `path` to `url`, streamed from disk with pread() (never
    /// held in memory whole, so multi-GiB checkpoints are fine). The file is opened
    /// and its size taken from fstat() here, before this returns; the descriptor is
    /// held until the future is ready, and every attempt re-reads the file from
    /// offset 0. Status, retry and header rules are those of put(). A file that
    /// cannot be opened, is not a regular file, fails to read, or turns out shorter
    /// than its submitted size fails with Errc::Io naming the path, unretried.
    /// Errors name the URL, size, path and cause.
    std::future<Result<void>> put_file(const std::string& url, const std::string& path,
                                       std::vector<std::string> headers = {});
    /// HEAD `url`: the Content-Length if 200, Errc::NotFound on 404 (used to skip uploads
    /// of objects that already exist, and to verify an upload landed with the right size).
    /// Other statuses and a 200 without Content-Length give HttpStatus.
    std::future<Result<std::uint64_t>> head(const std::string& url);

    /// Counters, for logs and tests.
    struct Stats {
        std::uint64_t requests = 0;  ///< attempts sent, retries included
        std::uint64_t retries = 0;
        std::uint64_t bytes = 0;  ///< body bytes received
        std::uint64_t bytes_sent = 0;  ///< request body bytes uploaded, retries included
        std::uint64_t connections = 0;  ///< new connections opened (not reused)
    };
    Stats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace shelbyfs
