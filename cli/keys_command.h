// `tandem keys [--out FILE] [--check FILE]`: the reference of every card key — model cards,
// cluster cards, scenarios, calibrations, kernel rules — with its type, allowed values and
// default. It is recorded from the card readers themselves (common/card_reader.h KeyRecording)
// while they read every card tandem ships, so it cannot drift from what tandem accepts; a key
// that only a setting no shipped card uses would ask for is not listed. --check compares a
// committed reference (docs/card-keys.md) with a fresh one: exit 2 naming the first difference.
#pragma once

#include <string>

#include "common/input_error.h"

namespace tandem {

struct KeysOptions {
  std::string out;    // write the Markdown reference here ("": stdout)
  std::string check;  // compare this file with the reference instead
};

// The Markdown reference (shipped cards found through shipped_data_path).
Result<std::string> card_key_reference();

// Runs the command; `text` is what to print.
Result<std::string> keys_command(const KeysOptions& o);

}  // namespace tandem
