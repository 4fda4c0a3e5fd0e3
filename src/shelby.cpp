// Shelby: RPC reads, and the store that writes through the S3 gateway or the CLI.
#include "shelbyfs/shelby.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "shelbyfs/log.h"
#include "shelbyfs/s3.h"

extern char** environ;

namespace shelbyfs {

namespace {

constexpr std::string_view kScheme = "shelby://";
constexpr std::size_t kMaxBlobName = 1024;

std::future<Result<std::string>> ready(Result<std::string> r) {
    std::promise<Result<std::string>> p;
    p.set_value(std::move(r));
    return p.get_future();
}

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// An executable named `name` (a path, or looked up on PATH); "" if none.
std::string find_executable(const std::string& name) {
    if (name.empty()) return {};
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
    const char* path = std::getenv("PATH");
    std::string_view dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
    while (!dirs.empty()) {
        const auto colon = dirs.find(':');
        std::string dir(dirs.substr(0, colon));
        dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
        if (dir.empty()) continue;
        std::string candidate = dir + "/" + name;
        struct stat st {};
        if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
    }
    return {};
}

// Runs argv, returning its exit status and its combined output (at most 64 KiB kept).
Result<std::pair<int, std::string>> run_captured(const std::vector<std::string>& argv) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return make_error(Errc::Io, std::string("pipe: ") + std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (rc != 0) {
        ::close(fds[0]);
        return make_error(Errc::Io, "cannot run " + argv[0] + ": " + std::strerror(rc));
    }
    std::string output;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (output.size() < 65536) output.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), std::move(output));
}

std::string last_line(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    const auto nl = text.rfind('\n');
    return nl == std::string::npos ? text : text.substr(nl + 1);
}

// Writes with `shelby upload`; reads (get/head) through the RPC; cannot list.
class ShelbyCliStore final : public ObjectStore {
public:
    ShelbyCliStore(ShelbyReader& reader, ShelbyUrl base, std::string cli)
        : reader_(reader), account_(std::move(base.account)), prefix_(std::move(base.name)), cli_(std::move(cli)) {
        if (!prefix_.empty() && prefix_.back() != '/') prefix_ += '/';
    }
    std::string describe() const override { return std::string(kScheme) + account_ + "/" + prefix_; }
    std::string location(const std::string& key) const override { return describe() + key; }

    Result<void> put_file(const std::string& key, const std::string& path) override {
        if (auto ok = check_object_key(key, describe()); !ok) return ok;
        const auto& s = reader_.settings();
        const auto expires = std::chrono::duration_cast<std::chrono::seconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count() +
                             static_cast<long long>(s.expiration_seconds);
        std::vector<std::string> argv{cli_};
        if (!s.cli_context.empty()) argv.insert(argv.end(), {"--context", s.cli_context});
        argv.insert(argv.end(), {"upload", path, prefix_ + key, "-e", std::to_string(expires), "--assume-yes"});
        auto ran = run_captured(argv);
        if (!ran) return make_error(Errc::Io, "upload of " + location(key) + ": " + ran.error().message);
        const auto& [status, output] = *ran;
        if (status == 0) return {};
        if (output.find("lready exists") != std::string::npos) {
            // Blob names are immutable: an existing one is fine only if it
            // holds exactly these bytes (a rerun), never silently kept otherwise.
            auto existing = reader_.get(location(key));
            if (!existing) {
                return make_error(existing.error().code, "upload of " + location(key) +
                                                             ": the CLI says it exists, but reading it back failed: " +
                                                             existing.error().message);
            }
            auto local = read_local_file(path);
            if (!local) return make_error(local.error().code, "upload of " + location(key) + ": " + local.error().message);
            if (*existing == *local) return {};
            return make_error(Errc::Exists, "upload of " + location(key) +
                                                ": a different blob already has that name, and Shelby blobs cannot "
                                                "be overwritten (delete it with the shelby CLI, or use another prefix)");
        }
        return make_error(Errc::Io, "upload of " + location(key) + ": " + cli_ + " exited with status " +
                                        std::to_string(status) + ": " + last_line(output));
    }
    Result<void> put_bytes(const std::string& key, const std::string& bytes) override {
        char tmpl[] = "/tmp/shelbyfs-upload-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        if (fd < 0) return make_error(Errc::Io, std::string("temp file for upload: ") + std::strerror(errno));
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            done += static_cast<std::size_t>(n);
        }
        ::close(fd);
        Result<void> r = done == bytes.size() ? put_file(key, tmpl)
                                              : Result<void>(make_error(Errc::Io, "temp file for upload: write failed"));
        ::unlink(tmpl);
        return r;
    }
    Result<std::uint64_t> head(const std::string& key) override {
        if (auto ok = check_object_key(key, describe()); !ok) return std::move(ok).error();
        // The RPC has no HEAD: a whole GET is the only exact size it gives.
        auto body = reader_.get(location(key));
        if (!body) return std::move(body).error();
        return static_cast<std::uint64_t>(body->size());
    }
    Result<std::string> get(const std::string& key) override {
        if (auto ok = check_object_key(key, describe()); !ok) return std::move(ok).error();
        return reader_.get(location(key));
    }
    Result<std::vector<std::string>> list(const std::string&) override {
        return make_error(Errc::NotSupported, "cannot list " + describe() +
                                                  ": the Shelby RPC has no listing; configure the Shelby S3 gateway "
                                                  "(shelby_gateway in a profile, see shelbyfs.toml(5))");
    }

private:
    ShelbyReader& reader_;
    std::string account_;
    std::string prefix_;
    std::string cli_;
};

}  // namespace

Result<ShelbyUrl> parse_shelby_url(std::string_view url) {
    if (url.substr(0, kScheme.size()) != kScheme) {
        return make_error(Errc::InvalidArgument, std::string(url) + ": not a shelby:// URL");
    }
    const std::string_view rest = url.substr(kScheme.size());
    const auto slash = rest.find('/');
    ShelbyUrl out;
    out.account = std::string(rest.substr(0, slash));
    // Addresses are case-insensitive hex; the RPC and the gateway use lowercase.
    for (char& c : out.account) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (slash != std::string_view::npos) out.name = std::string(rest.substr(slash + 1));
    const bool hex_ok = out.account.size() > 2 && out.account.size() <= 66 && out.account.compare(0, 2, "0x") == 0 &&
                        std::all_of(out.account.begin() + 2, out.account.end(), is_hex);
    if (!hex_ok) {
        return make_error(Errc::InvalidArgument,
                          printable_key(url) + ": the account must be an address, 0x and up to 64 hex digits");
    }
    if (out.name.size() > kMaxBlobName) {
        return make_error(Errc::InvalidArgument, std::string(url.substr(0, 80)) + "...: blob names are at most 1024 bytes");
    }
    if (out.name.find('\0') != std::string::npos) {
        return make_error(Errc::InvalidArgument, printable_key(url) + ": blob name has a NUL byte");
    }
    return out;
}

ShelbyReader::ShelbyReader(HttpClient& http, ShelbySettings settings) : http_(http), settings_(std::move(settings)) {
    while (!settings_.rpc_url.empty() && settings_.rpc_url.back() == '/') settings_.rpc_url.pop_back();
}

std::string ShelbyReader::blob_url(const ShelbyUrl& url) const {
    return settings_.rpc_url + "/v1/blobs/" + url.account + "/" + uri_encode(url.name, true);
}

RequestOptions ShelbyReader::options() const {
    RequestOptions o;
    if (!settings_.api_key.empty()) o.headers.push_back("Authorization: Bearer " + settings_.api_key);
    return o;
}

std::future<Result<std::string>> ShelbyReader::read_range(const std::string& location, std::uint64_t offset,
                                                          std::uint64_t length) {
    auto url = parse_shelby_url(location);
    if (!url) return ready(std::move(url).error());
    if (url->name.empty() || url->name.back() == '/') {
        return ready(make_error(Errc::InvalidArgument, location + ": no blob name"));
    }
    return http_.read_range(blob_url(*url), offset, length, options());
}

Result<std::string> ShelbyReader::get(const std::string& location) {
    auto url = parse_shelby_url(location);
    if (!url) return std::move(url).error();
    if (url->name.empty() || url->name.back() == '/') {
        return make_error(Errc::InvalidArgument, location + ": no blob name");
    }
    auto body = http_.get(blob_url(*url), options()).get();
    if (!body && body.error().code == Errc::HttpStatus &&
        (body.error().message.find("HTTP 401") != std::string::npos ||
         body.error().message.find("HTTP 403") != std::string::npos)) {
        return make_error(Errc::HttpStatus,
                          body.error().message + (settings_.api_key.empty()
                                                      ? "; the RPC wants an API key: set SHELBY_API_KEY (or "
                                                        "shelby_api_key in a profile)"
                                                      : "; check the API key (SHELBY_API_KEY / shelby_api_key)"));
    }
    return body;
}

Result<std::unique_ptr<ObjectStore>> open_shelby_store(const std::string& location, ShelbyReader& reader,
                                                      S3Client* gateway) {
    auto url = parse_shelby_url(location);
    if (!url) return std::move(url).error();
    if (gateway != nullptr) {
        std::string base = location;
        if (base.back() != '/') base += '/';
        S3Url s3{url->account, url->name};
        return make_s3_store(*gateway, std::move(s3), std::move(base));
    }
    const std::string& wanted = reader.settings().cli;
    std::string cli = find_executable(wanted.empty() ? "shelby" : wanted);
    if (cli.empty()) {
        return make_error(Errc::NotSupported,
                          location + ": cannot write to Shelby: configure the Shelby S3 gateway (shelby_gateway in a "
                                     "profile) or install the shelby CLI" +
                              (wanted.empty() ? std::string() : " (shelby_cli = " + wanted + " is not executable)") +
                              "; see shelbyfs.toml(5)");
    }
    return std::unique_ptr<ObjectStore>(std::make_unique<ShelbyCliStore>(reader, std::move(*url), std::move(cli)));
}

}  // namespace shelbyfs
