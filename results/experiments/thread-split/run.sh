cd "$(dirname "$0")/../../.."  # the repository root
/work/venv/bin/python benchmarks/train_throughput.py --threads 1 --models "bireal_resnet20 (ReSTE o_end=3)" --steps 10 --rounds 2 --out /tmp/t1a.json > /tmp/t1a.log 2>&1 &
/work/venv/bin/python benchmarks/train_throughput.py --threads 1 --models "bireal_resnet20 (ReSTE o_end=3)" --steps 10 --rounds 2 --out /tmp/t1b.json > /tmp/t1b.log 2>&1 &
wait
/work/venv/bin/python benchmarks/train_throughput.py --threads 1 --models "bireal_resnet20 (ReSTE o_end=3)" --steps 10 --rounds 2 --out /tmp/t1c.json > /tmp/t1c.log 2>&1
/work/venv/bin/python benchmarks/train_throughput.py --threads 2 --models "bireal_resnet20 (ReSTE o_end=3)" --steps 10 --rounds 2 --out /tmp/t2.json > /tmp/t2.log 2>&1
