// Leveled, category-tagged logging to stderr (or a file). Thread-safe.
#pragma once

#include <string_view>

namespace shelbyfs::log {

enum class Level { Error = 0, Warn = 1, Info = 2, Debug = 3 };

/// Set the most verbose level that is written. Default: Warn.
void set_level(Level level);
Level level();
/// Redirect output to an append-only file; false if it cannot be opened.
bool set_file(const char* path);

/// Write one line: "shelbyfs[pid] LEVEL category: message". Never throws.
void write(Level level, std::string_view category, std::string_view message) noexcept;

inline void error(std::string_view category, std::string_view message) { write(Level::Error, category, message); }
inline void warn(std::string_view category, std::string_view message) { write(Level::Warn, category, message); }
inline void info(std::string_view category, std::string_view message) { write(Level::Info, category, message); }
inline void debug(std::string_view category, std::string_view message) {
    if (level() >= Level::Debug) write(Level::Debug, category, message);
}

}  // namespace shelbyfs::log
