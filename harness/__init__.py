"""The Pulumi program under Pulumi's standard mocks: `run_program` evaluates `__main__.py` for a
stack and records every resource it registers. The tests, `make render` and `make policy` use it;
the program itself never imports it."""
