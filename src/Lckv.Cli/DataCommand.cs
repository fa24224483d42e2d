using System.CommandLine;
using System.Text.Json;
using Lckv.Training;

namespace Lckv.Cli;

/// <summary>lckv data prepare: tokenize text files into a memory-mapped token dataset with a validation split.</summary>
public static class DataCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.model / tokenizer.json (or a folder holding one)", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "dataset folder to write (meta.json, train.bin, val.bin)", Required = true };
        var valFraction = new Option<double>("--val-fraction")
        {
            Description = "fraction of each file's tokens, taken from its end, held out for validation",
            DefaultValueFactory = _ => 0.05,
        };
        var force = new Option<bool>("--force") { Description = "replace an existing dataset folder" };
        var json = new Option<bool>("--json") { Description = "print the result as JSON" };
        var files = new Argument<string[]>("files") { Description = "text files (UTF-8)", Arity = ArgumentArity.OneOrMore };
        var prepare = new Command("prepare", "tokenize text files into a training dataset (train/validation split: the tail of each file)");
        foreach (var o in new Option[] { tokenizer, output, valFraction, force, json }) prepare.Options.Add(o);
        prepare.Arguments.Add(files);
        prepare.SetAction(p =>
        {
            string outDir = p.GetValue(output)!;
            var meta = Progress.Run("tokenizing", report =>
                TokenDataset.Prepare(p.GetValue(tokenizer)!, p.GetValue(files)!, outDir, p.GetValue(valFraction), p.GetValue(force), report), stderr);
            if (meta.TrainTokens == 0) stderr.WriteLine("warning: the training split is empty: the input files hold too few tokens");
            if (meta.ValTokens == 0 && p.GetValue(valFraction) > 0)
                stderr.WriteLine($"warning: the validation split is empty (--val-fraction {p.GetValue(valFraction).ToString(System.Globalization.CultureInfo.InvariantCulture)} of {meta.TrainTokens} tokens); training cannot report validation loss");
            if (p.GetValue(json))
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    output = outDir, dtype = meta.DType, vocab_size = meta.VocabSize, train_tokens = meta.TrainTokens,
                    val_tokens = meta.ValTokens, files = meta.Sources.Count, tokenizer = meta.Tokenizer,
                }));
                return 0;
            }
            stdout.WriteLine($"wrote {outDir}: {meta.TrainTokens} train + {meta.ValTokens} validation tokens ({meta.DType}, vocabulary {meta.VocabSize}) from {meta.Sources.Count} file(s)");
            return 0;
        });
        var cmd = new Command("data", "prepare training data");
        cmd.Subcommands.Add(prepare);
        return cmd;
    }
}
