"""Environments for tests: well-behaved ones, and ones that misbehave in each way a trajectory must survive."""

import asyncio
import os
import time

import rlstack


class Countdown(rlstack.Environment):
    """Answers every turn with ``left: k`` until ``turns`` turns are taken, then ends with reward ``turns``."""

    def __init__(self, turns: int = 2, role: str = "user"):
        self.turns, self.role, self.taken = turns, role, 0

    def reset(self, row):
        return [{"role": "user", "content": f"count down from {self.turns}: {row['prompt']}"}]

    def step(self, messages, completion):
        self.taken += 1
        if self.taken >= self.turns:
            return rlstack.Step(reward=float(self.turns), done=True, info={"steps": 1})
        return rlstack.Step(
            observation=[{"role": self.role, "content": f"left: {self.turns - self.taken}"}], info={"steps": 1}
        )


class AsyncCountdown(Countdown):
    async def reset(self, row):
        await asyncio.sleep(0)
        return super().reset(row)

    async def step(self, messages, completion):
        await asyncio.sleep(0)
        return super().step(messages, completion)


class Hangs(Countdown):
    def step(self, messages, completion):
        time.sleep(3600)


class AsyncHangs(Countdown):
    async def step(self, messages, completion):
        await asyncio.sleep(3600)


class Raises(Countdown):
    def step(self, messages, completion):
        raise RuntimeError("the tool broke")


class Exits(Countdown):
    def step(self, messages, completion):
        os._exit(1)


class ReturnsAString(Countdown):
    def step(self, messages, completion):
        return "done"


class BadObservation(Countdown):
    def step(self, messages, completion):
        return rlstack.Step(observation="the result is 4")


class BadReset(Countdown):
    def reset(self, row):
        return {"role": "user", "content": "hi"}


class NoStep:
    def reset(self, row):
        return row["messages"]


class FirstResetFails(Countdown):
    """The first instance's reset raises; the others open as Countdown does."""

    num_resets = 0

    def reset(self, row):
        FirstResetFails.num_resets += 1
        if FirstResetFails.num_resets == 1:
            raise RuntimeError("no room")
        return super().reset(row)
