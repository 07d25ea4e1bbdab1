"""Taking mail in: adapters (SMTP, IMAP, files) and the pipeline they share."""
