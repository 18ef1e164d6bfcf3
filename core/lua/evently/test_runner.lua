-- Runs busted inside the evently runtime (`evently test [paths]`): specs are
-- in a coroutine on the event loop, so they may call every platform API,
-- yielding ones included. busted reads its options from the global arg.
require "busted.runner" ({ standalone = false })
