# Thin aliases for dev.py, which needs nothing but Python: `make demo` == `python3 dev.py demo`.
.PHONY: demo test setup
demo:
	python3 dev.py demo
test:
	python3 dev.py test
setup:
	python3 dev.py setup
