"""Looking inside a model (`charnn show`, `Model.surprisal`, `Model.activations`, `Model.gradient_reach`): the
surprisal of every character, the recurrent units that track simple properties of the text, how far back the
loss reaches through the recurrence, and a sequence-to-sequence model's attention. Numbers only: rendering is
`charnn.reports.showpage` (the HTML page) and `charnn.cli.showview` (the terminal)."""
