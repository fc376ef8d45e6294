"""The command line's commands, one module each: ``add_parser(subparsers)`` adds its
sub-parser, ``run(args)`` carries it out. This is the CLI layer: the library never imports
it. Each module imports at its top only what parsing needs; the library (and PyTorch) load
inside ``run``, so ``reslab --help`` and config errors stay fast."""

from . import (
    bench,
    calibrate,
    compare,
    config,
    demo,
    evaluate,
    export,
    models,
    predict,
    recipes,
    report,
    serve,
    summary,
    train,
    tune,
)

# In the order ``reslab --help`` lists them.
COMMANDS = (train, evaluate, calibrate, demo, summary, models, recipes, config, compare, tune, report, bench, predict,
            export, serve)
