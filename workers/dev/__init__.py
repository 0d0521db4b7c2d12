"""Development tooling: simulate, replay, the embedded demo, embedded servers, learner simulation."""
