read -r n <e2e-input.txt
line="e2e sh $((n * 2))"
printf '%s\n' "$line" >e2e-sh.txt
echo "$line"
