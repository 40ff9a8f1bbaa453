"""Options shared by the commands. Values are checked once, by ``edgescale.settings``
(the same function batch lines and the API go through), not here."""

from __future__ import annotations

import typer

from edgescale import limits

MODEL = typer.Option(None, "--model", "-m", envvar="EDGESCALE_MODEL",
                     help="Catalog name, a pulled model's name (`edgescale models` lists both) or path to a .gguf "
                          "file / ONNX directory.")
BACKEND = typer.Option("llama.cpp", "--backend", envvar="EDGESCALE_BACKEND",
                       help="llama.cpp, onnx, or auto (the faster of the two by this device's measured profiles).")
STRATEGY = typer.Option(None, "--strategy", "-s", envvar="EDGESCALE_STRATEGY",
                        help="single, maj@K, ffs@K, short-M@K, best@K, adaptive[:...], early-exit[:...], auto.")
SAMPLES = typer.Option(None, "--samples", "-k",
                       help=f"Samples per query, 1 to {limits.MAX_SAMPLES} (alone: majority@k; with a strategy: "
                            "its k if the spec has none).")
TEMPERATURE = typer.Option(None, "--temperature", "-t",
                           help=f"Sampling temperature, 0 to {limits.MAX_TEMPERATURE:g} (default: 0 for one "
                                f"sample, {limits.MULTI_SAMPLE_TEMPERATURE:g} for several).")
TOP_K = typer.Option(limits.DEFAULT_TOP_K, "--top-k", help="Top-k filter (0 = off).")
TOP_P = typer.Option(limits.DEFAULT_TOP_P, "--top-p", help="Nucleus filter, (0, 1].")
MIN_P = typer.Option(limits.DEFAULT_MIN_P, "--min-p", help="Min-p filter, [0, 1].")
FREQUENCY_PENALTY = typer.Option(0.0, "--frequency-penalty",
                                 help="OpenAI's: each logit minus this times the count of its token in the sample "
                                      "so far, -2 to 2 (0 = off).")
PRESENCE_PENALTY = typer.Option(0.0, "--presence-penalty",
                                help="OpenAI's: each logit of a token already in the sample minus this, -2 to 2.")
LOGIT_BIAS = typer.Option(None, "--logit-bias", metavar="ID=BIAS,...",
                          help="Add BIAS (-100 to 100; -100 bans) to the logit of token ID, as OpenAI's logit_bias.")
MAX_TOKENS = typer.Option(limits.DEFAULT_MAX_TOKENS, "--max-tokens", "-n",
                          help=f"New tokens per sample at most (1 to {limits.MAX_NEW_TOKENS}).")
SEED = typer.Option(limits.DEFAULT_SEED, "--seed", help="Base seed; sample i uses seed + i.")
THREADS = typer.Option(None, "--threads", envvar="EDGESCALE_THREADS",
                       help="CPU threads (default: the cores free right now; at most the cores there are).")
GPU_LAYERS = typer.Option(None, "--gpu-layers",
                          help="Layers to offload to the GPU (default: as many as fit; 0 on CPU-only builds).")
ANSWER = typer.Option("auto", "--answer",
                      help="Answer kind to extract and vote on: auto|number|choice|yesno|text|json; number:tail, "
                           "choice:tail, yesno:tail reason freely, then decode the answer under its grammar.")
JSON_SCHEMA = typer.Option(None, "--json-schema", metavar="FILE|JSON",
                           help="Output must be JSON valid under this schema (a file, or the schema's JSON text).")
REGEX = typer.Option(None, "--regex", help="Output must match this regular expression (in full).")
CHOICES = typer.Option(None, "--choices", metavar="A,B,C", help="Output must be one of these comma-separated strings.")
GRAMMAR = typer.Option(None, "--grammar", metavar="FILE",
                       help="Output must match this grammar file (Lark or llama.cpp GBNF, as llguidance reads them).")
STOP = typer.Option([], "--stop", help="Stop string (repeatable).")
SYSTEM = typer.Option(None, "--system", help="System message.")
RAW = typer.Option(False, "--raw", help="Send the prompt as is, without the model's chat template.")
DEADLINE = typer.Option(None, "--deadline", help="Latency budget per query, e.g. 2s or 500ms.")
MEMORY = typer.Option(None, "--memory", help="Memory budget, e.g. 512MB or 1GB.")
JSON = typer.Option(False, "--json", help="Print one JSON result object.")
NO_PREFIX_CACHE = typer.Option(False, "--no-prefix-cache", help="Read every prompt in full (no prompt KV reuse).")
RAY = typer.Option(None, "--ray", metavar="[ADDRESS]",
                   help="Run on a Ray cluster (needs edgescale[cluster]): --ray alone starts a local Ray instance; "
                        "auto joins the one `ray start` runs here; HOST:PORT joins that head node.")
ACTORS = typer.Option(None, "--actors", min=1, help="With --ray: worker actors, each loading the model once "
                      "(default: as many as the cluster's CPUs hold at --threads-per-actor).")
THREADS_PER_ACTOR = typer.Option(1, "--threads-per-actor", min=1,
                                 help="With --ray: CPU threads each actor decodes with (and reserves from Ray).")
RETRIES = typer.Option(2, "--retries", min=0, help="With --ray: times Ray restarts a worker that died and "
                       "retries its unfinished lines before they become error records.")
KV_LAYOUT = typer.Option("auto", "--kv-layout",
                        help="KV cache of the shared decode loop: auto (one stream per sequence when several queries "
                             "decode at once, else one unified cache), unified, or streams.")
IGNORE_EOS = typer.Option(False, "--ignore-eos",
                         help="Samples run to --max-tokens (or a --stop string), past the end-of-text token: "
                              "for measuring, as llama.cpp's flag.")
KV_TYPE = typer.Option("auto", "--kv-type", envvar="EDGESCALE_KV_TYPE",
                      help="KV cache element types: f16, q8_0, q4_0, K/V (e.g. q8_0/f16), or auto (f16 unless a "
                           "--memory budget would cut the plan and a lossy type, measured within its bound by "
                           "`edgescale devices --calibrate`, lets it fit).")
DETERMINISTIC = typer.Option(False, "--deterministic",
                             help="A query's tokens do not depend on what else decodes with it (exact KV streams; "
                                  "refused where the model's kernels round by batch width).")
POLICY = typer.Option(None, "--policy", envvar="EDGESCALE_POLICY",
                      help="auto's policy for this model and task, fitted by `edgescale tune --task NAME` "
                           "(default: the built-in one).")
