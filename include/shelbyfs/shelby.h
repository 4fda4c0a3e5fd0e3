// The Shelby network: blob reads from an RPC node (GET {rpc}/v1/blobs/<account>/<name>
// with Range and an optional Bearer API key), and writes through the Shelby S3
// gateway or the `shelby` CLI. See ../shared/STORAGE-APIS.md §1-2.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <string_view>

#include "shelbyfs/blob_reader.h"
#include "shelbyfs/config.h"
#include "shelbyfs/http_client.h"
#include "shelbyfs/object_store.h"
#include "shelbyfs/result.h"

namespace shelbyfs {

class S3Client;

/// "shelby://<account>/<blob name>": the account ("0x" + 1-64 hex digits) and
/// the raw blob name (may contain '/'; may be empty or end in '/' as a
/// prefix). InvalidArgument naming the URL otherwise.
struct ShelbyUrl {
    std::string account;
    std::string name;
};
Result<ShelbyUrl> parse_shelby_url(std::string_view url);

/// Reads "shelby://" locations from the RPC node. Thread-safe.
class ShelbyReader final : public BlobReader {
public:
    ShelbyReader(HttpClient& http, ShelbySettings settings);
    /// {rpc_url}/v1/blobs/<account>/<percent-encoded name, '/' kept>.
    std::string blob_url(const ShelbyUrl& url) const;
    std::future<Result<std::string>> read_range(const std::string& location, std::uint64_t offset,
                                                std::uint64_t length) override;
    /// The whole blob (manifests). NotFound for 404 (missing, expired or wiped).
    Result<std::string> get(const std::string& location);
    const ShelbySettings& settings() const { return settings_; }

private:
    RequestOptions options() const;
    HttpClient& http_;
    ShelbySettings settings_;
};

/// A store under "shelby://<account>/<prefix>/" for checkpoints and push.
/// Writes go through `gateway` (the Shelby S3 gateway, bucket = account, with
/// x-amz-meta-expiration-seconds) when it is not null, else through the
/// `shelby` CLI (settings().cli, or `shelby` found on PATH); location() keys
/// are shelby:// URLs, read through the RPC. Fails with NotSupported, saying
/// what to configure, when neither writer is available.
Result<std::unique_ptr<ObjectStore>> open_shelby_store(const std::string& location, ShelbyReader& reader,
                                                      S3Client* gateway);

}  // namespace shelbyfs
