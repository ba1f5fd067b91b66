// Dtype dispatch for the three floating types every op supports.
#pragma once

#include <ATen/Dispatch.h>

#define HOPSCOTCH_DISPATCH_CASE_FLOATING_TYPES(...)    \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__)

// float64 is accepted too: it is what torch.autograd.gradcheck and the float64 oracles use on the CPU.
#define HOPSCOTCH_DISPATCH_CASE_FLOATING_TYPES_AND_DOUBLE(...) \
  HOPSCOTCH_DISPATCH_CASE_FLOATING_TYPES(__VA_ARGS__)          \
  AT_DISPATCH_CASE(at::ScalarType::Double, __VA_ARGS__)

#define HOPSCOTCH_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, HOPSCOTCH_DISPATCH_CASE_FLOATING_TYPES(__VA_ARGS__))

#define HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, HOPSCOTCH_DISPATCH_CASE_FLOATING_TYPES_AND_DOUBLE(__VA_ARGS__))
