// S3Client: the S3 calls shelbyfs needs (ranged GET, HEAD, ListObjectsV2, PUT,
// multipart upload), over HttpClient with SigV4 signed by libcurl, plus the
// BlobReader and ObjectStore built on it.
//
// Debian 12's libcurl 7.88 signs the raw path and raw query, so every URL is
// built here already canonical: keys percent-encoded (RFC 3986, uppercase hex,
// '/' kept), query parameters sorted with "k=v" always. Every request carries
// x-amz-content-sha256: UNSIGNED-PAYLOAD (7.88 does not add it), no
// x-amz-checksum-* header is ever sent (Akave O3 rejects them), requests are
// path-style, and ETags are opaque strings.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/config.h"
#include "shelbyfs/http_client.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

/// "k1=v1&k2=v2" sorted by key then value, both encoded, '=' always present.
std::string canonical_query(std::vector<std::pair<std::string, std::string>> params);

/// "s3://bucket/key": the bucket and the raw (unencoded) key, which may be
/// empty or end in '/' (a prefix). Fails with InvalidArgument naming the URL
/// for another scheme, an empty bucket, or a bucket name S3 would reject.
struct S3Url {
    std::string bucket;
    std::string key;
};
Result<S3Url> parse_s3_url(std::string_view url);

struct S3Head {
    std::uint64_t size = 0;
    std::string etag;  ///< opaque, as sent (quotes included)
    /// x-amz-meta-* headers: names lowercased without the prefix.
    std::vector<std::pair<std::string, std::string>> metadata;
    const std::string* meta(std::string_view name) const;
};

struct S3ListEntry {
    std::string key;
    std::uint64_t size = 0;
};

/// Thread-safe. Synchronous calls wait for HttpClient (with its retries).
/// Errors name the operation, "s3://bucket/key" and the cause (S3's error
/// code and message when the server sent one); never a credential.
class S3Client {
public:
    S3Client(HttpClient& http, S3Settings settings);

    const S3Settings& settings() const { return settings_; }
    /// {endpoint}/{bucket}/{encoded key}.
    std::string object_url(const std::string& bucket, const std::string& key) const;

    std::future<Result<std::string>> read_range(const std::string& bucket, const std::string& key,
                                                std::uint64_t offset, std::uint64_t length);
    /// NotFound if there is no such object.
    Result<S3Head> head(const std::string& bucket, const std::string& key);
    Result<std::string> get(const std::string& bucket, const std::string& key);
    /// `headers`: extra "Name: value" (x-amz-meta-*), added to settings().put_headers.
    Result<void> put_bytes(const std::string& bucket, const std::string& key, std::string bytes,
                           std::vector<std::string> headers = {});
    /// Streams `path`; a multipart upload (settings().part_size parts,
    /// parts_in_flight at once) from settings().multipart_threshold bytes.
    /// `progress`, if set, is called with the bytes sent so far (per part).
    Result<void> put_file(const std::string& bucket, const std::string& key, const std::string& path,
                          std::vector<std::string> headers = {},
                          const std::function<void(std::uint64_t)>& progress = {});
    /// Every object whose key starts with `prefix` (all pages). With a
    /// `delimiter`, keys with it past the prefix are rolled up into
    /// `common_prefixes` (if given) instead.
    Result<std::vector<S3ListEntry>> list(const std::string& bucket, const std::string& prefix,
                                          const std::string& delimiter = "",
                                          std::vector<std::string>* common_prefixes = nullptr);
    /// Counters for tests: multipart uploads completed, parts sent.
    struct Stats {
        std::uint64_t multipart_uploads = 0;
        std::uint64_t parts = 0;
    };
    Stats stats() const;

private:
    RequestOptions options(std::vector<std::string> extra = {}) const;
    /// A hint to append to `error` when unsigned requests were refused.
    std::string hint(const Error& error) const;
    std::string bucket_url(const std::string& bucket) const;
    std::string where(const std::string& bucket, const std::string& key) const;
    Result<HttpResponse> call(HttpRequest request);
    Result<void> put_multipart(const std::string& bucket, const std::string& key, const std::string& path,
                               std::uint64_t size, const std::vector<std::string>& headers,
                               const std::function<void(std::uint64_t)>& progress);

    HttpClient& http_;
    S3Settings settings_;
    std::shared_ptr<const AwsSigV4> sigv4_;  // null: anonymous
    std::atomic<std::uint64_t> multipart_uploads_{0};
    std::atomic<std::uint64_t> parts_{0};
};

/// Reads "s3://bucket/key" locations.
class S3Reader final : public BlobReader {
public:
    explicit S3Reader(S3Client& client) : client_(client) {}
    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override;

private:
    S3Client& client_;
};

/// An ObjectStore under "s3://bucket/prefix/": keys map to prefix + key;
/// location() gives "s3://bucket/prefix/key" (raw). `scheme_base`, if not
/// empty, replaces "s3://bucket/prefix/" in location() and describe() (the
/// Shelby store reads through the RPC what it writes through the gateway).
std::unique_ptr<ObjectStore> make_s3_store(S3Client& client, S3Url base, std::string scheme_base = {});

/// Decode XML character references and the five predefined entities.
std::string xml_unescape(std::string_view text);

}  // namespace shelbyfs
