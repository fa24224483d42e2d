using Lckv.Cli;

return Cli.Run(args);
