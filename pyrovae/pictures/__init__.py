"""What a user looks at: prior samples, reconstructions, latent maps and training curves, drawn
for any model and guide from their traces (:mod:`.plots`) and rendered to PNG (:mod:`.figures`)."""
