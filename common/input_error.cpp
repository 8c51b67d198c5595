#include "common/input_error.h"

namespace tandem {

std::string InputError::message() const {
  std::string m = file.empty() ? std::string("<input>") : file;
  if (!key.empty()) m += ": " + key;
  m += ": " + reason;
  return m;
}

InputException::InputException(InputError error)
    : error_(std::move(error)), what_(error_.message()) {}

void throw_input_error(std::string file, std::string key, std::string reason) {
  throw InputException(InputError{std::move(file), std::move(key), std::move(reason)});
}

}  // namespace tandem
