using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using Lckv.Formats;

namespace Lckv.Cli;

/// <summary>The lckv command: parse, validate, call the library, format output. Errors are one line on stderr.</summary>
public static class Cli
{
    public static int Run(string[] args, TextWriter? stdout = null, TextWriter? stderr = null)
    {
        var output = stdout ?? Console.Out;
        var error = stderr ?? Console.Error;
        // named lckv, not after the executable (Lckv.Cli, testhost), so help and usage say what the user types
        var root = new Command("lckv", "Lckv: run, benchmark and evaluate Llama models with a small KV cache, in pure .NET")
        {
            Options = { new HelpOption(), new VersionOption() },
        };
        root.Subcommands.Add(GenerateCommand.Create(output, error));
        root.Subcommands.Add(PerplexityCommand.Create(output, error));
        root.Subcommands.Add(BenchCommand.Create(output, error));
        root.Subcommands.Add(InfoCommand.Create(output, error));
        root.Subcommands.Add(ConvertCommand.Create(output, error));
        root.Subcommands.Add(KvSharerCommand.Create(output, error));
        root.Subcommands.Add(LessCommand.Create(output, error));
        root.Subcommands.Add(DataCommand.Create(output, error));
        root.Subcommands.Add(TrainCommand.Create(output, error));
        root.Subcommands.Add(PlotCommand.Create(output, error));
        root.Subcommands.Add(ServeCommand.Create(output, error));
        root.Subcommands.Add(TemplateCommand.Create(output, error));
        ParseResult parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // an unknown word says more than the missing command it stands in for
            var first = parse.Errors.FirstOrDefault(e => e.SymbolResult is not CommandResult { Command: var c } || c != root || e.Message.StartsWith("Unrecognized", StringComparison.Ordinal))
                ?? parse.Errors[0];
            error.WriteLine($"error: {Describe(first)} (see 'lckv --help')");
            return 2;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, Output = output, Error = error });
        }
        catch (Exception e)
        {
            return Report(e, error);
        }
    }

    /// <summary>One line per failure, never a stack trace (unless LCKV_DEBUG=1).</summary>
    public static int Report(Exception e, TextWriter error)
    {
        if (Environment.GetEnvironmentVariable("LCKV_DEBUG") == "1") error.WriteLine(e.ToString());
        switch (e)
        {
            case LckvException le:
                error.WriteLine($"error: {OneLine(e.Message)}{FlagsOf(le.Settings)}");
                return 1;
            case FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException:
                error.WriteLine($"error: {OneLine(e.Message)}");
                return 1;
            case OperationCanceledException:
                error.WriteLine("error: cancelled");
                return 130;
            case OutOfMemoryException:
                error.WriteLine("error: out of memory (lower the KV budget, the batch or the context length)");
                return 1;
            default:
                error.WriteLine($"error: internal error ({e.GetType().Name}): {OneLine(e.Message)}; set LCKV_DEBUG=1 for details");
                return 70;
        }
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();

    /// <summary>A parse error in the user's words: a value that does not parse as its option's type says what the option
    /// takes ("--seed must be a non-negative integer, got '-1'"), never a .NET type name.</summary>
    internal static string Describe(ParseError e)
    {
        if (e.SymbolResult is OptionResult { Option: var option } result && e.Message.StartsWith("Cannot parse argument", StringComparison.Ordinal))
        {
            var type = Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType;
            string takes = type == typeof(ulong) || type == typeof(uint) ? "a non-negative integer"
                : type == typeof(int) || type == typeof(long) ? "an integer"
                : type == typeof(float) || type == typeof(double) ? "a number"
                : type == typeof(bool) ? "true or false"
                : $"a {type.Name.ToLowerInvariant()}";
            string got = result.Tokens.Count > 0 ? $", got '{Printable.Escape(result.Tokens[^1].Value)}'" : "";
            return $"{option.Name} must be {takes}{got}";
        }
        return e.Message;
    }

    /// <summary>The flags that set the library's settings (LckvException.Settings), by the settings' library names.</summary>
    private static readonly Dictionary<string, string> _flags = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Batch"] = "--batch", ["SeqLen"] = "--seq-len", ["Accum"] = "--accum", ["Clip"] = "--clip",
        ["Lr"] = "--lr", ["MaxLr"] = "--lr", ["MinLr"] = "--min-lr", ["Warmup"] = "--warmup",
        ["Steps"] = "--steps", ["TotalSteps"] = "--steps", ["EvalEvery"] = "--eval-every", ["EvalBatches"] = "--eval-batches",
        ["SaveEvery"] = "--save-every", ["Resume"] = "--resume", ["Arch"] = "--arch", ["ValFraction"] = "--val-fraction",
        ["Force"] = "--force", ["StopStrings"] = "--stop", ["Depth"] = "--depth", ["ContextLength"] = "--context",
        ["CalibrationSamples"] = "--samples", ["CalibrationLength"] = "--length", ["Threshold"] = "--threshold", ["Share"] = "--share",
    };

    /// <summary>" (--batch, --seq-len)" for the flags of the given settings; empty when none has one.</summary>
    internal static string FlagsOf(IReadOnlyList<string> settings)
    {
        var flags = settings.Select(s => _flags.GetValueOrDefault(s)).OfType<string>().Distinct().ToList();
        return flags.Count == 0 ? "" : $" ({string.Join(", ", flags)})";
    }
}
