// Storage configuration: which S3 endpoint, region and credentials, which
// Shelby RPC node and API key, and default mount settings, resolved from the
// standard environment (AWS_*, SHELBY_*), a TOML config file with named
// profiles (man/shelbyfs.toml.5) and built-in presets (aws, akave, shelbynet,
// shelby-local).
//
// Precedence, field by field (highest first):
//   credentials: a profile chosen explicitly (--profile / -o profile) that sets
//                them; else AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY
//                (+ AWS_SESSION_TOKEN); else the profile's; else none (anonymous).
//   region:      AWS_REGION, AWS_DEFAULT_REGION, the profile, its preset, "us-east-1".
//   endpoint:    AWS_ENDPOINT_URL, the profile, its preset, https://s3.<region>.amazonaws.com.
//   shelby_*:    SHELBY_RPC_URL / SHELBY_ACCOUNT / SHELBY_API_KEY, the profile, its preset.
// The profile is the one named by --profile, else AWS_PROFILE, else the file's
// top-level `profile` key, else none. A profile name that is not in the file
// but is a preset name selects that preset.
//
// Secrets (secret_access_key, session_token, shelby_api_key and the gateway's)
// are never logged or put in error messages.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shelbyfs/result.h"

namespace shelbyfs {

/// An S3-compatible endpoint (AWS, Akave O3, the Shelby S3 gateway, s3rver).
struct S3Settings {
    /// scheme://host[:port][/path] with no trailing '/'; requests are path-style
    /// {endpoint}/{bucket}/{key}.
    std::string endpoint;
    std::string region = "us-east-1";
    std::string access_key_id;      ///< empty: unsigned (anonymous) requests
    std::string secret_access_key;  ///< secret
    std::string session_token;      ///< secret; sent as x-amz-security-token when set
    /// Uploads of at least this many bytes use multipart upload.
    std::uint64_t multipart_threshold = 64ull << 20;
    std::uint64_t part_size = 16ull << 20;  ///< 5 MiB .. 5 GiB
    int parts_in_flight = 4;                ///< 1 .. 64
    /// Extra "Name: value" headers on every object PUT and multipart create
    /// (the Shelby gateway's x-amz-meta-expiration-seconds).
    std::vector<std::string> put_headers;
};

struct ShelbySettings {
    /// Base of the RPC node: GET {rpc_url}/v1/blobs/<account>/<name>.
    std::string rpc_url = "https://api.shelbynet.shelby.xyz/shelby";
    std::string account;  ///< default account (0x + 1-64 hex digits), for messages and push
    std::string api_key;  ///< secret; sent as "Authorization: Bearer <key>" when set
    /// The Shelby S3 gateway, for writes (bucket = account); nullopt: none
    /// configured. load_profile() gives it the S3 multipart settings and the
    /// x-amz-meta-expiration-seconds put header.
    std::optional<S3Settings> gateway;
    /// The `shelby` CLI used for writes (push) when no gateway is configured;
    /// empty: `shelby` from PATH, if there is one.
    std::string cli;
    std::string cli_context;  ///< passed as --context when not empty
    std::uint64_t expiration_seconds = 30ull * 24 * 3600;  ///< blob lifetime on upload
};

struct Profile {
    std::string name;    ///< "" when no profile was selected
    std::string origin;  ///< for messages: "/home/u/.config/shelbyfs/config.toml [profiles.akave]", "preset akave", "environment"
    S3Settings s3;
    ShelbySettings shelby;
    /// Mount settings from the profile, as -o name/value pairs applied before
    /// the command line's own -o (names: cache_size, memory_limit, prefetch,
    /// threads, retries, timeout, connect_timeout, cache_dir, disk_cache_size,
    /// spool_dir, spool_size, checkpoints, log_file).
    std::vector<std::pair<std::string, std::string>> mount_options;
    /// Non-fatal problems for the caller to log, e.g. a config file holding
    /// secrets that others can read.
    std::vector<std::string> warnings;
};

struct ConfigRequest {
    /// --config FILE; empty: $XDG_CONFIG_HOME/shelbyfs/config.toml or
    /// ~/.config/shelbyfs/config.toml, where a missing file is not an error.
    std::string config_path;
    /// --profile / -o profile; empty: AWS_PROFILE, then the file's `profile`.
    std::string profile;
    /// Reads the environment; nullptr for unset. Defaults to ::getenv.
    std::function<const char*(const char*)> getenv;
};

/// Resolve the profile. Fails with InvalidArgument naming the file, line and
/// key for a malformed file, an unknown key or preset, a bad value, an
/// explicit --config file that does not exist, an explicit --profile that is
/// neither in the file nor a preset, or a *_env key naming an unset variable.
Result<Profile> load_profile(const ConfigRequest& request);

/// Names of the built-in presets, for --help and messages.
std::vector<std::string> preset_names();

}  // namespace shelbyfs
