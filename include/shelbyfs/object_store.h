// ObjectStore: where checkpoints live. Whole-object put/get/head/list of keys
// under one base location (a local directory or an HTTP WebDAV collection).
//
// Keys are '/'-separated relative names ("objects/<hash>", "index/<rec>.json").
// They never start with '/' and never contain "." or ".." segments, empty
// segments or NUL bytes; every call but location() checks this and fails with
// Errc::InvalidArgument naming the key. Any other byte is allowed (HTTP stores
// percent-encode keys per RFC 3986). Stores never overwrite on their own
// initiative: callers write content-addressed or uniquely named keys, so a put
// of an existing key carries identical bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shelbyfs/result.h"

namespace shelbyfs {

class HttpClient;
class StreamingPut;

enum class MoveMode { Replace, NoReplace };

/// Thread-safe. Every call is synchronous and returns once the store has
/// answered (after the transport's retries). Errors name the key (or prefix),
/// the base and the cause.
class ObjectStore {
public:
    virtual ~ObjectStore() = default;

    /// The base, for messages: "/data/checkpoints" or "http://host/x/checkpoints/".
    virtual std::string describe() const = 0;
    /// What a BlobReader (Storage::reader()) reads `key` from: a path or a URL
    /// (percent-encoded). `key` is not checked here.
    virtual std::string location(const std::string& key) const = 0;

    /// Store the whole local file `path` under `key`, streaming it (never
    /// loading it whole into memory). On success the object is complete and
    /// durable. A failed or interrupted put never leaves a partial object
    /// visible under `key`. Errors name the key, the base and the cause.
    virtual Result<void> put_file(const std::string& key, const std::string& path) = 0;
    /// Store `bytes` under `key` (small objects: index records). Same guarantees.
    virtual Result<void> put_bytes(const std::string& key, const std::string& bytes) = 0;
    /// Size of the object under `key`; Errc::NotFound if there is none.
    virtual Result<std::uint64_t> head(const std::string& key) = 0;
    /// The whole object; Errc::NotFound if there is none.
    virtual Result<std::string> get(const std::string& key) = 0;
    /// Names of the objects directly under `prefix` (a key prefix ending in '/',
    /// or "" for the base), without the prefix, sorted bytewise, files only
    /// (no sub-collections). A prefix that does not exist yet gives an empty list.
    /// Names holding ".partial-" (a local store's in-progress temp files) are
    /// never listed. An HTTP store reads nginx `autoindex_format json` listings,
    /// or links in an HTML index; nginx's autoindex omits names starting with '.'.
    virtual Result<std::vector<std::string>> list(const std::string& prefix) = 0;

    /// Start storing the local file `path`, still being written, under `key`
    /// while it grows (see StreamingPut; the object exists only once finish()
    /// succeeded). nullptr where the store cannot (the default): the caller
    /// then uploads the finished file with put_file().
    virtual std::unique_ptr<StreamingPut> begin_stream(const std::string& key, const std::string& path);
    /// Rename the object `from` to `to` (WebDAV MOVE): how a streamed
    /// temporary object gets its content-addressed name. Replace overwrites
    /// `to`; NoReplace asks the server to keep an existing `to` (WebDAV
    /// "Overwrite: F"): the move then fails (412, Errc::HttpStatus) and
    /// `from` stays. Errc::NotSupported by default.
    virtual Result<void> move(const std::string& from, const std::string& to, MoveMode mode);
    /// Delete the object `key` (a temporary one). Errc::NotSupported by default.
    virtual Result<void> remove(const std::string& key);
};

/// RFC 3986 percent-encoding: keeps A-Z a-z 0-9 - . _ ~ (and '/' if
/// `keep_slash`), writes every other byte as %XX with uppercase hex.
std::string uri_encode(std::string_view text, bool keep_slash);

/// The key rules above, for store implementations: InvalidArgument naming
/// the key and `base` if `key` (or a list() `prefix`) breaks them.
Result<void> check_object_key(const std::string& key, const std::string& base);
Result<void> check_list_prefix(const std::string& prefix, const std::string& base);
/// A name list() may return: one valid segment, not a local temp file.
bool is_listable_key_name(std::string_view name);
/// `key` for messages, control bytes shown as \xNN.
std::string printable_key(std::string_view key);

/// Open the store at `location`: an http(s):// URL (a trailing '/' is added
/// if missing) or a local directory path (created, with parents, by the
/// first put; a missing one lists as empty).
/// `http` must outlive the store and is required for URLs.
Result<std::unique_ptr<ObjectStore>> open_object_store(const std::string& location, HttpClient* http);

}  // namespace shelbyfs
