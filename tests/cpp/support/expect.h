// Assertions shared by the tests.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <typeinfo>

#include "fastopt/c_api.h"

namespace fastopt_test {

// f() throws an exception of exactly type E (not a subclass: a TensorError is not the
// std::invalid_argument expected for a bad hyperparameter) whose message is `message`.
template <class E, class F>
::testing::AssertionResult throws_exactly(F&& f, const std::string& message) {
  try {
    f();
  } catch (const std::exception& e) {
    if (typeid(e) != typeid(E)) {
      return ::testing::AssertionFailure() << "threw " << typeid(e).name() << " (\"" << e.what() << "\"), expected "
                                           << typeid(E).name();
    }
    if (message != e.what()) {
      return ::testing::AssertionFailure() << "message \"" << e.what() << "\"\n   expected \"" << message << "\"";
    }
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "threw nothing, expected " << typeid(E).name() << " \"" << message << "\"";
}

// A C ABI call returned `status` and fastopt_last_error() is `message`.
inline ::testing::AssertionResult c_error(fastopt_status got, fastopt_status status, const std::string& message) {
  if (got != status) {
    return ::testing::AssertionFailure() << "status " << got << " (\"" << fastopt_last_error() << "\"), expected "
                                         << status;
  }
  if (message != fastopt_last_error()) {
    return ::testing::AssertionFailure() << "last error \"" << fastopt_last_error() << "\"\n      expected \""
                                         << message << "\"";
  }
  return ::testing::AssertionSuccess();
}

// The same double, bit for bit (any NaN matches any NaN).
inline ::testing::AssertionResult same_double(double got, double expected) {
  if (std::isnan(got) && std::isnan(expected)) return ::testing::AssertionSuccess();
  uint64_t a, b;
  std::memcpy(&a, &got, 8);
  std::memcpy(&b, &expected, 8);
  if (a == b) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << got << " (" << std::hexfloat << got << "), expected " << expected << " ("
                                       << expected << std::defaultfloat << ")";
}

}  // namespace fastopt_test
