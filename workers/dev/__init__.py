"""Development tooling: simulate, replay, the demo, embedded servers, learner simulation."""
