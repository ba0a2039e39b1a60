// Transparent huge pages for fastact's large CPU outputs.
//
// A fresh output of tens of MB comes from the allocator as new memory (glibc mmaps every block of 32 MiB and
// more), and the first write to each 4 KB page takes a page fault: for a 64 MB output that is 16384 faults,
// several times the cost of the kernel that fills it. Where the system leaves huge pages to the program
// (/sys/kernel/mm/transparent_hugepage/enabled = madvise, the common default), marking the output with
// madvise(MADV_HUGEPAGE) before the kernel writes it makes that one fault per 2 MB. PyTorch does the same
// for every allocation when THP_MEM_ALLOC_ENABLE=1; fastact does it for its own outputs of 32 MiB and more.
// Smaller blocks usually come back from glibc's heap, already mapped: there the advice saves nothing and its
// system call cost 2-7% of a 4 MB LeakyReLU (measured, benchmarks/results/cpu/zen3/README.md).
// Off with FASTACT_HUGE_PAGES=0 or fastact.set_cpu_huge_pages(False).
#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <c10/util/Exception.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../fork_safe.h"
#include "../ops.h"

namespace fastact::cpu {
namespace {

// The huge page size if the system hands out huge pages on request (madvise mode), else 0.
std::size_t detect_huge_page_size() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  // "always": the kernel already uses huge pages wherever it can; "never": it will not.
  if (!std::getline(mode, line) || line.find("[madvise]") == std::string::npos) return 0;
  std::size_t size = 2u << 20;
  std::ifstream pmd("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
  pmd >> size;
  return size > 0 && (size & (size - 1)) == 0 ? size : 0;
#else
  return 0;
#endif
}

std::size_t huge_page_size() {
  constexpr std::size_t kUnknown = ~std::size_t(0);
  static std::atomic<std::size_t> size{kUnknown};  // read on first use (not in a guarded initializer: fork_safe.h)
  return load_or_compute(size, kUnknown, detect_huge_page_size);
}

bool env_enabled() {
  const char* env = std::getenv("FASTACT_HUGE_PAGES");
  if (env != nullptr) {
    std::string value(env);
    for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (value == "0" || value == "false" || value == "off" || value == "no") return false;
    if (!value.empty() && value != "1" && value != "true" && value != "on" && value != "yes") {
      TORCH_WARN("fastact: FASTACT_HUGE_PAGES=", env, " is not one of 0/false/off/no or 1/true/on/yes; "
                 "huge pages stay at their default (on where the system hands them out)");
    }
  }
  const char* torch_thp = std::getenv("THP_MEM_ALLOC_ENABLE");  // PyTorch's allocator already advises
  if (torch_thp != nullptr && std::strcmp(torch_thp, "1") == 0) return false;
  return huge_page_size() != 0;
}

std::atomic<int>& enabled_flag() {  // 1 on, 0 off
  static std::atomic<int> flag{-1};  // from the environment on first use (fork_safe.h)
  load_or_compute(flag, -1, [] { return env_enabled() ? 1 : 0; });
  return flag;
}

}  // namespace

bool huge_pages_enabled() { return enabled_flag().load(std::memory_order_relaxed) == 1; }

bool set_huge_pages(bool enabled) {
  // Asking for huge pages where the system does not hand them out is a no-op, not an error.
  return enabled_flag().exchange(enabled && huge_page_size() != 0 ? 1 : 0) == 1;
}

void advise_huge_pages(void* data, std::size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): blocks this large are always fresh
  // mappings.
  constexpr std::size_t kMinBytes = std::size_t(32) << 20;
  const std::size_t page = huge_page_size();
  if (page == 0 || nbytes < kMinBytes || !huge_pages_enabled()) return;
  // Only the whole huge pages inside the buffer: the memory around it may belong to other allocations.
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + page - 1) & ~(page - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + nbytes) & ~(page - 1);
  if (end > begin) {
    // Advice only: on failure the memory keeps its 4 KB pages and the result is the same.
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)nbytes;
#endif
}

}  // namespace fastact::cpu
