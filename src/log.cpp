// Logging sink: one mutex around one FILE*, lines written whole.
#include "shelbyfs/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace shelbyfs::log {

namespace {
std::atomic<Level> g_level{Level::Warn};
std::mutex g_mutex;
std::FILE* g_out = nullptr;  // nullptr means stderr; guarded by g_mutex

const char* level_name(Level l) {
    switch (l) {
        case Level::Error: return "ERROR";
        case Level::Warn: return "WARN";
        case Level::Info: return "INFO";
        case Level::Debug: return "DEBUG";
    }
    return "?";
}
}  // namespace

void set_level(Level l) { g_level.store(l); }
Level level() { return g_level.load(); }

bool set_file(const char* path) {
    // "e": close-on-exec, so fusermount3 and other children do not inherit it.
    std::FILE* f = std::fopen(path, "ae");
    if (f == nullptr) return false;
    std::setvbuf(f, nullptr, _IOLBF, 0);
    std::lock_guard lock(g_mutex);
    if (g_out != nullptr) std::fclose(g_out);
    g_out = f;
    return true;
}

void write(Level l, std::string_view category, std::string_view message) noexcept {
    if (l > g_level.load()) return;
    try {
        char stamp[32];
        std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        std::string line = std::string(stamp) + " shelbyfs[" + std::to_string(::getpid()) + "] " + level_name(l) +
                           " " + std::string(category) + ": " + std::string(message) + "\n";
        std::lock_guard lock(g_mutex);
        std::FILE* out = g_out != nullptr ? g_out : stderr;
        std::fwrite(line.data(), 1, line.size(), out);
        std::fflush(out);
    } catch (...) {
        // Logging must never take the daemon down.
    }
}

}  // namespace shelbyfs::log
