import runpy, sys
sys.setswitchinterval(float(sys.argv[1]))
sys.argv = ["negatives_cost.py"] + sys.argv[2:]
sys.path.insert(0, "benchmarks")
runpy.run_path("benchmarks/negatives_cost.py", run_name="__main__")
