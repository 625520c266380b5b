"""What the trainer decides from the GPUs it sees, as pure functions of what the process sees: whether a run that
asked for GPUs can use them, what `dtype: auto` computes in, and how many weights a packed 4-bit tensor holds."""

import pytest
from sftop_trainer.errors import EXIT_CLASSES, USER_ERROR_CODES, ExitCode
from sftop_trainer.memory import halved_batch, out_of_memory_message
from sftop_trainer.model import auto_dtype, packed_4bit_values
from sftop_trainer.runtime import gpu_problem

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("requested, visible, names, cuda, driver, expected", [
    (None, 0, [], None, None, None),  # a config that states no GPUs (a local CPU run)
    (0, 0, [], "12.8", None, None),  # asked for none
    (1, 1, [H100], "12.8", "570.124.06", None),
    (2, 4, [H100] * 4, "12.8", "570.124.06", None),  # more visible than asked: the run uses what it asked for
    (1, 0, [], "12.8", "535.104.05", ["asks for 1 GPU(s)", "none visible", "CUDA 12.8", "driver 535.104.05"]),
    (1, 0, [], "12.8", None, ["none visible", "CUDA 12.8", "no NVIDIA driver readable"]),
    (1, 0, [], None, None, ["CPU-only build"]),
    (2, 1, [H100], "12.8", "570.124.06", ["asks for 2 GPU(s)", f"1 visible ({H100})"]),
])
def test_a_run_that_asked_for_gpus_it_cannot_use_is_named_with_what_it_sees(requested, visible, names, cuda, driver,
                                                                            expected):
    problem = gpu_problem(requested, visible, names, cuda, driver)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and all(part in problem for part in expected), problem


def test_gpu_unavailable_fails_the_job_at_once():
    cls = EXIT_CLASSES[ExitCode.GPU_UNAVAILABLE]
    assert cls.reason == "GPUUnavailable" and not cls.retryable
    assert ExitCode.GPU_UNAVAILABLE in USER_ERROR_CODES  # the operator's podFailurePolicy FailJob rule
    assert EXIT_CLASSES[ExitCode.OUT_OF_MEMORY].reason == "CUDAOutOfMemory"


@pytest.mark.parametrize("capability, dtype", [
    (None, "float32"),  # no GPU
    ((6, 0), "float16"),  # P100
    ((7, 0), "float16"),  # V100: torch.cuda.is_bf16_supported() says True, through emulation
    ((7, 5), "float16"),  # T4
    ((8, 0), "bfloat16"),  # A100
    ((8, 6), "bfloat16"),  # A10, RTX 30xx
    ((8, 9), "bfloat16"),  # L4, L40S
    ((9, 0), "bfloat16"),  # H100, H200
    ((10, 0), "bfloat16"),  # B200
])
def test_auto_computes_in_bfloat16_only_where_the_gpu_has_it_natively(capability, dtype):
    assert auto_dtype(capability) == dtype


@pytest.mark.parametrize("stored, element_size, weights", [
    (32, 1, 64),  # uint8 storage (bitsandbytes' default): two weights per byte
    (16, 2, 64),  # bfloat16 / float16 storage: four per element
    (8, 4, 64),  # float32 storage: eight per element
])
def test_packed_4bit_tensors_count_the_weights_they_hold(stored, element_size, weights):
    assert packed_4bit_values(stored, element_size) == weights


@pytest.mark.parametrize("batch, accumulation, smaller", [
    (8, 1, (4, 2)), (4, 2, (2, 4)), (2, 4, (1, 8)), (1, 8, None), (3, 1, (1, 2)),
])
def test_auto_batch_size_halves_the_batch_and_doubles_the_accumulation(batch, accumulation, smaller):
    assert halved_batch(batch, accumulation) == smaller


GIB = 1024**3


@pytest.mark.parametrize("batch, plan, gpu, peak, reduced, auto, expected, absent", [
    (8, {"perGpu": 30.5, "wouldFit": ["method: qlora"]}, 80 * GIB, 79 * GIB, 0, False,
     ["at step 12 with 8 sequence(s)", "the plan estimated 30.5 GiB per GPU", "the GPU has 80.0 GiB",
      "allocated up to 79.0 GiB", "What would fit: method: qlora", "training.autoBatchSize: true"], ["halved"]),
    (8, {"perGpu": 30.5}, None, None, 0, False,
     ["training.perDeviceTrainBatchSize: 4 with gradientAccumulationSteps: 2"], ["the GPU has", "allocated"]),
    (1, None, 24 * GIB, 23 * GIB, 3, True,
     ["halved the batch 3 time(s)", "no plan was made", "a lower training.maxLength"], ["autoBatchSize: true"]),
])
def test_out_of_memory_says_what_the_plan_expected_and_what_would_fit(batch, plan, gpu, peak, reduced, auto,
                                                                      expected, absent):
    text = out_of_memory_message(12, batch, 1, plan, gpu, peak, reduced, auto)
    assert all(part in text for part in expected), text
    assert not any(part in text for part in absent), text
