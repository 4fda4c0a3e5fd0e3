// Storage: one place that knows every kind of location (local path, http(s)://,
// s3://, shelby://) and hands out readers and stores for them, configured
// from a Profile. The FUSE-free core and the commands (mount, push, verify)
// go through it instead of picking a backend themselves.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/config.h"
#include "shelbyfs/http_client.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

class S3Client;
class ShelbyReader;

/// Thread-safe. `http` must outlive it.
class Storage {
public:
    Storage(HttpClient& http, Profile profile);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;

    /// Routes each location by scheme; paths go to pread().
    BlobReader& reader();
    /// A whole object (manifests): a file, an http(s) GET, an S3 GET, a Shelby blob.
    Result<std::string> read_whole(const std::string& location);
    /// The store rooted at `location` (a directory, a WebDAV collection URL,
    /// s3://bucket/prefix/, shelby://account/prefix/).
    Result<std::unique_ptr<ObjectStore>> open_store(const std::string& location);
    /// The object's size: stat(), HEAD. For shelby:// (the RPC has no HEAD),
    /// NotSupported.
    Result<std::uint64_t> size_of(const std::string& location);

    const Profile& profile() const { return profile_; }
    HttpClient& http() { return http_; }
    S3Client& s3();
    ShelbyReader& shelby();
    S3Client* shelby_gateway();  ///< null when none is configured

private:
    class Router;
    HttpClient& http_;
    Profile profile_;
    std::unique_ptr<S3Client> s3_;
    std::unique_ptr<S3Client> gateway_;
    std::unique_ptr<ShelbyReader> shelby_;
    std::unique_ptr<Router> router_;
};

/// The URL schemes manifests, stores and commands accept.
bool is_supported_scheme(std::string_view location);

}  // namespace shelbyfs
