// Standalone Python test servers for the s3 tier: tools/testlib/s3.py (s3rver
// behind a SigV4-verifying proxy) and tools/testlib/shelby_rpc.py (the Shelby
// RPC stand-in), each run as a child process on 127.0.0.1.
//
// A PyServer forks /usr/bin/python3 -m <module> serve ..., with pipes on its
// stdin and stdout, PYTHONPATH = SHELBYFS_TOOLS_DIR, and PR_SET_PDEATHSIG so
// it dies with this process. The constructor waits (bounded) for the one JSON
// line the server prints when ready; the destructor closes its stdin (the
// server's signal to stop), waits (bounded), then SIGKILLs it by PID, and
// removes its temp directory.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef SHELBYFS_TOOLS_DIR
#error "SHELBYFS_TOOLS_DIR must be defined (meson passes <repo>/tools)"
#endif

extern char** environ;

namespace shelbyfs::test {

inline constexpr const char* kPython = "/usr/bin/python3";

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents by the destructor.
class ScratchDir {
public:
    ScratchDir() {
        const char* tmp = std::getenv("TMPDIR");
        std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/shelbyfs-s3test-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
        path_ = tmpl;
    }
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

/// Runs argv with PYTHONPATH set, stdin /dev/null, output discarded; its exit status (-1 if it could not run).
inline int run_quiet(const std::vector<std::string>& argv, std::chrono::seconds limit = std::chrono::seconds(60));

class PyServer {
public:
    /// Starts `python3 -m <module> serve <args...>` and waits up to `limit`
    /// for its JSON line. Throws std::runtime_error (with the server's stderr)
    /// if it exits or stays silent.
    PyServer(const std::string& module, std::vector<std::string> args,
             std::chrono::seconds limit = std::chrono::seconds(30)) {
        std::vector<std::string> argv{kPython, "-m", module, "serve", "--dir", dir_.file("work")};
        argv.insert(argv.end(), args.begin(), args.end());
        std::vector<std::string> env = child_env();
        const std::string err_path = dir_.file("stderr.log");

        int in[2];
        int out[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
        std::vector<char*> cargv;
        for (auto& a : argv) cargv.push_back(a.data());
        cargv.push_back(nullptr);
        std::vector<char*> cenv;
        for (auto& e : env) cenv.push_back(e.data());
        cenv.push_back(nullptr);
        const pid_t parent = ::getpid();

        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {  // child: async-signal-safe calls only
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);
            const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
            ::dup2(in[0], 0);
            ::dup2(out[1], 1);
            if (err >= 0) ::dup2(err, 2);
            ::execve(kPython, cargv.data(), cenv.data());
            ::_exit(127);
        }
        ::close(in[0]);
        ::close(out[1]);
        stdin_ = in[1];
        const int rd = out[0];

        std::string line;
        const auto deadline = std::chrono::steady_clock::now() + limit;
        bool got = false;
        while (!got) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) break;
            pollfd p{rd, POLLIN, 0};
            const int n = ::poll(&p, 1, static_cast<int>(left.count()));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            char buf[4096];
            const ssize_t r = ::read(rd, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;  // exited
            line.append(buf, static_cast<std::size_t>(r));
            got = line.find('\n') != std::string::npos;
        }
        ::close(rd);
        if (!got) {
            stop();
            throw std::runtime_error(module + " did not start within " + std::to_string(limit.count()) +
                                     " s; its stderr:\n" + read_file(err_path));
        }
        info_ = nlohmann::json::parse(line.substr(0, line.find('\n')));
    }

    ~PyServer() { stop(); }
    PyServer(const PyServer&) = delete;
    PyServer& operator=(const PyServer&) = delete;

    /// The JSON the server printed when ready.
    const nlohmann::json& info() const { return info_; }
    std::string str(const char* key) const { return info_.contains(key) ? info_[key].get<std::string>() : ""; }
    const ScratchDir& dir() const { return dir_; }

private:
    static std::vector<std::string> child_env() {
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            if (std::strncmp(*e, "PYTHONPATH=", 11) != 0) env.emplace_back(*e);
        }
        env.emplace_back(std::string("PYTHONPATH=") + SHELBYFS_TOOLS_DIR);
        return env;
    }
    static std::string read_file(const std::string& path) {
        std::string s;
        if (FILE* f = std::fopen(path.c_str(), "rb")) {
            char buf[4096];
            std::size_t n;
            while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
            std::fclose(f);
        }
        return s;
    }
    void stop() {
        if (stdin_ >= 0) {
            ::close(stdin_);
            stdin_ = -1;
        }
        if (pid_ <= 0) return;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (;;) {
            int status = 0;
            const pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_ || (r < 0 && errno != EINTR)) break;
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
                }
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        pid_ = -1;
    }

    ScratchDir dir_;
    pid_t pid_ = -1;
    int stdin_ = -1;
    nlohmann::json info_;

    friend int run_quiet(const std::vector<std::string>&, std::chrono::seconds);
};

inline int run_quiet(const std::vector<std::string>& argv, std::chrono::seconds limit) {
    std::vector<std::string> env = PyServer::child_env();
    std::vector<std::string> args = argv;
    std::vector<char*> cargv;
    for (auto& a : args) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::vector<char*> cenv;
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        const int null = ::open("/dev/null", O_RDWR);
        if (null >= 0) {
            ::dup2(null, 0);
            ::dup2(null, 1);
            ::dup2(null, 2);
        }
        ::execve(cargv[0], cargv.data(), cenv.data());
        ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) return -1;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/// Exits the process with 77 (meson's SKIP) when the S3 harness's prerequisites
/// (tools/node/node_modules/.bin/s3rver or $SHELBYFS_S3RVER, botocore for /usr/bin/python3) are
/// missing; under CI=true that is a failure (exit 1) instead. Checked once.
inline void require_s3_prereqs() {
    static const bool checked = [] {
        std::string missing;
        const char* override_bin = std::getenv("SHELBYFS_S3RVER");  // honoured by testlib.s3 too
        const std::string s3rver = override_bin != nullptr && *override_bin != '\0'
                                       ? std::string(override_bin)
                                       : std::string(SHELBYFS_TOOLS_DIR) + "/node/node_modules/.bin/s3rver";
        if (::access(s3rver.c_str(), X_OK) != 0) missing += " " + s3rver + " (run tools/deps.sh);";
        if (::access(kPython, X_OK) != 0) {
            missing += std::string(" ") + kPython + ";";
        } else if (run_quiet({kPython, "-c", "import botocore"}) != 0) {
            missing += " botocore for /usr/bin/python3 (apt-get install python3-botocore);";
        }
        if (missing.empty()) return true;
        const char* ci = std::getenv("CI");
        const bool in_ci = ci != nullptr && std::string(ci) == "true";
        std::fprintf(stderr, "test_s3_client: %s: missing:%s\n", in_ci ? "FAIL (CI=true)" : "SKIP", missing.c_str());
        std::fflush(stderr);
        std::_Exit(in_ci ? 1 : 77);
    }();
    (void)checked;
}

}  // namespace shelbyfs::test
