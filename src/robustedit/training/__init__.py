"""Training the editors that learn (MEND, SERAC): the shared loop, trained-editor files, one
module per trainer; ``training.trainers`` maps editor names to them."""
