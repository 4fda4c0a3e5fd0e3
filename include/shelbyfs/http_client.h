// HttpClient: the one owner of libcurl. A curl-multi I/O thread serves ranged
// GETs, whole-object GETs, PUTs (from memory or streamed from a file) and HEADs
// submitted from any thread, with retries.
#pragma once

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
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

/// AWS Signature Version 4, computed by libcurl (CURLOPT_AWS_SIGV4). libcurl
/// 7.88 signs the raw path and the raw query, and every header in
/// RequestOptions::headers; callers must pre-encode keys, sort the query and
/// send x-amz-content-sha256 themselves (see s3.cpp).
struct AwsSigV4 {
    std::string region;
    std::string service = "s3";
    std::string access_key_id;
    std::string secret_access_key;  ///< never logged
};

/// Per-request additions, for any request kind.
struct RequestOptions {
    /// Extra "Name: value" request headers (signed when sigv4 is set). One
    /// holding CR/LF or no ':' fails the request with InvalidArgument.
    std::vector<std::string> headers;
    std::shared_ptr<const AwsSigV4> sigv4;  ///< null: unsigned
};

/// The final response to a send().
struct HttpResponse {
    long status = 0;
    std::string body;
    /// Header names lowercased, values trimmed, in arrival order.
    std::vector<std::pair<std::string, std::string>> headers;
    /// The first header named `lowercase_name`, or nullptr.
    const std::string* header(std::string_view lowercase_name) const;
};

/// A request of any method. The body, if any, comes from `body` or from the
/// byte range [file_offset, file_offset + file_length) of `body_file`
/// (streamed with pread(), re-read on every attempt).
struct HttpRequest {
    std::string method = "GET";  ///< GET, HEAD, PUT, POST, DELETE or MOVE (WebDAV; no body)
    std::string url;
    RequestOptions options;
    std::shared_ptr<const std::string> body;
    std::string body_file;
    std::uint64_t file_offset = 0;
    std::uint64_t file_length = UINT64_MAX;  ///< UINT64_MAX: to the end of the file
};

/// A PUT of a local file that is still being written, sent as it grows
/// (chunked transfer encoding) so the upload overlaps the writes. Each runs on
/// a thread of its own that HttpClient owns. Never retried: a failed stream
/// is the caller's cue to upload the finished file with put_file().
/// Destroying the handle before finish() abandons the transfer.
class StreamingPut {
public:
    virtual ~StreamingPut() = default;
    /// Bytes [0, size) of the file are written and may be sent.
    virtual void extend(std::uint64_t size) = 0;
    /// The file is complete at `size` (at least every extend()): send the
    /// rest and wait for the server's answer. Success means a 2xx answer to
    /// a body of exactly `size` bytes.
    virtual Result<void> finish(std::uint64_t size) = 0;
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
    /// The same, with extra headers or signing. A 206 without Content-Range
    /// (the Shelby RPC documents none) is accepted when its body has exactly
    /// `length` bytes.
    std::future<Result<std::string>> read_range(const std::string& url, std::uint64_t offset, std::uint64_t length,
                                                RequestOptions options);
    /// GET the whole object (manifests). 404 gives Errc::NotFound.
    std::future<Result<std::string>> get(const std::string& url, RequestOptions options = {});

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
    /// Start a StreamingPut of `path` (opened here; Errc::Io if it cannot
    /// be) to `url`. Nothing is sent before the first extend().
    Result<std::unique_ptr<StreamingPut>> stream_put(const std::string& url, const std::string& path);
    /// HEAD `url`: the Content-Length if 200, Errc::NotFound on 404 (used to skip uploads
    /// of objects that already exist, and to verify an upload landed with the right size).
    /// Other statuses and a 200 without Content-Length give HttpStatus.
    std::future<Result<std::uint64_t>> head(const std::string& url, RequestOptions options = {});

    /// Any request. Succeeds with the response on 2xx; 404 gives NotFound;
    /// 408/429/5xx and transport failures are retried (re-sending the whole
    /// body); other statuses fail with HttpStatus, the message quoting the
    /// error body's S3 <Code>/<Message> or JSON "error" when there is one.
    /// Response bodies above max_body_bytes fail. Redirects are followed for
    /// GET and HEAD only.
    std::future<Result<HttpResponse>> send(HttpRequest request);

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
