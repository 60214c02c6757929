"""Running model-written programs against a problem's tests: the program and test types, the code extraction, the
local sandbox (bubblewrap) and the SandboxFusion client."""
