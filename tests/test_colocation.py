from rlstack.colocation import GpuMemory, must_sleep
from rlstack.controller import UNTRAINED_STEPS_WARNING, untrained_warning


def test_an_update_that_fits_beside_the_awake_engine_keeps_it_awake():
    # needs 10 - 4 = 6 GiB; 6 * 1.5 + 2 = 11 GiB against 9 free + (5 - 4) cached = 10 GiB: does not fit
    assert must_sleep(GpuMemory(free_gib=9.0, allocated_gib=4.0, reserved_gib=5.0, update_peak_gib=10.0))
    # with 1 GiB more free: 11 GiB available, exactly enough
    assert not must_sleep(GpuMemory(free_gib=10.0, allocated_gib=4.0, reserved_gib=5.0, update_peak_gib=10.0))


def test_the_allocators_unused_cache_counts_as_available():
    memory = GpuMemory(free_gib=1.0, allocated_gib=2.0, reserved_gib=20.0, update_peak_gib=8.0)
    assert memory.available_gib == 19.0 and memory.update_gib == 6.0
    assert not must_sleep(memory)


def test_a_step_that_trains_nothing_says_so_and_later_names_the_likely_cause():
    first = untrained_warning(4, 1, identical_fraction=1.0)
    assert first == "step 4 trained nothing: every group's rewards were equal"
    copies = untrained_warning(6, UNTRAINED_STEPS_WARNING, identical_fraction=1.0)
    assert copies.startswith(first.replace("4", "6")) and "samples were identical" in copies
    alike = untrained_warning(6, UNTRAINED_STEPS_WARNING, identical_fraction=0.5)
    assert "score alike" in alike and "identical" not in alike
