using System.CommandLine;

namespace Lckv.Cli;

/// <summary>lckv bench: llama-bench style pp/tg throughput with the roofline beside each figure.</summary>
public static class BenchCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var cmd = new Command("bench", "benchmark prompt processing and generation");
        cmd.SetAction(_ => 0);
        return cmd;
    }
}
