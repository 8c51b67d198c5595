# tandem_target_defaults(target): warnings and sanitizers for tandem's own code.
function(tandem_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>)
  if(TANDEM_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(TANDEM_SANITIZE)
    # GCC 12 warns falsely (maybe-uninitialized) inside std::regex's automaton under the
    # sanitizers (sim/kernel_rules.h holds regexes); the regular build keeps the warning.
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
        -Wno-maybe-uninitialized>)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
    # idx() checks its index even though RelWithDebInfo defines NDEBUG (common/signed_index.h).
    target_compile_definitions(${target} PRIVATE TANDEM_CHECKED_INDEX=1)
  endif()
endfunction()

# CUDA sources: Hopper only, with the architecture-specific features (wgmma, TMA).
function(tandem_cuda_defaults target)
  set_target_properties(${target} PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD 17)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr>)
endfunction()
