// InputError: what was wrong with the user's input, as a value.
//
// Every card, scenario and command-line problem becomes one InputError naming the file, the key
// (dotted path, e.g. "plan.pp") and the reason. The CLI prints it as "file: key: reason" and exits
// with code 2. Loaders return Result<T>; inside a loader, parsing code throws InputException,
// which the loader's boundary turns back into a value.
#pragma once

#include <exception>
#include <string>
#include <utility>
#include <variant>

namespace tandem {

struct InputError {
  std::string file;    // the card or scenario file (or "--set" / "<command line>")
  std::string key;     // dotted key path inside it; empty when the file as a whole is wrong
  std::string reason;  // why, in words, with the offending value where it helps

  std::string message() const;
};

class InputException : public std::exception {
 public:
  explicit InputException(InputError error);
  const InputError& error() const { return error_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  InputError error_;
  std::string what_;
};

[[noreturn]] void throw_input_error(std::string file, std::string key, std::string reason);

// Result<T>: either a T or an InputError.
template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}                // NOLINT(google-explicit-constructor)
  Result(InputError error) : v_(std::move(error)) {}       // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const InputError& error() const { return std::get<1>(v_); }

  // Returns the value or throws the error as an InputException (for code inside a loader).
  T& value_or_throw() & {
    if (!ok()) throw InputException(error());
    return value();
  }

 private:
  std::variant<T, InputError> v_;
};

// Runs f(); an InputException it throws comes back as the error of the Result.
template <class F>
auto catch_input_errors(F&& f) -> Result<decltype(f())> {
  try {
    return f();
  } catch (const InputException& e) {
    return e.error();
  }
}

}  // namespace tandem
